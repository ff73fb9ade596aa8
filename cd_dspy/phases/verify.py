"""Phase 2b: the screen. Every candidate concept is tried alone, causally, before the search spends validation
calls on it; the confirmation, not the screen, decides what the program gets.

The target runs with one concept at a time on up to `max_sources` training mistakes (the ones it came from, but
never one whose answer its exemplar shows, then the most alike: `cd_dspy.phases.concepts.screen_examples`) and on a
seeded sample of training examples it got right (the same sample for every concept). A concept passes when it
fixes at least `min_fixed` of its mistakes and breaks no more correct examples than it fixes. The screen is
lenient on purpose: a prompt change alone flips a 0.5B model's answers both ways (about 15% on math-basic), so
a helpful concept that fixes one mistake while noise breaks one correct answer must get through; what noise
lets through, the confirmation rejects. Its error rates in a noisy world are measured in tests/test_screen.py.
What each concept fixed and broke is recorded in its provenance.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import dspy

from cd_dspy.core.evaluation import CachedEvaluator
from cd_dspy.core.result import Mistake, Rule, Verification
from cd_dspy.phases.concepts import screen_examples

logger = logging.getLogger(__name__)

VERIFICATION_LOG = "verification.jsonl"


def correct_sample(correct_indices: Sequence[int], size: int, seed: int) -> list[int]:
    """A seeded sample of the training examples the target got right (all of them when fewer)."""
    return sorted(random.Random(seed).sample(sorted(correct_indices), min(size, len(correct_indices))))


def checked(rules: Sequence[Rule], mistakes: Sequence[Mistake], correct: Sequence[int],
            max_sources: int) -> dict[str, list[int]]:
    """Each concept's screening examples: at most `max_sources` mistakes (`screen_examples`), then `correct`."""
    return {cid: own + list(correct) for cid, own in screen_examples(rules, mistakes, max_sources).items()}


def verify_rules(rules: Sequence[Rule], mistakes: Sequence[Mistake], correct: Sequence[int], *,
                 evaluator: CachedEvaluator, program_with: Callable[[Sequence[Rule]], dspy.Module],
                 threshold: float, max_sources: int, min_fixed: int = 1,
                 on_rule: Callable[[Rule], None] = lambda rule: None) -> list[Rule]:
    """Fill in `rule.verification` for every rule; return the rules that passed.

    `evaluator` scores programs on the trainset (indices are trainset positions); `program_with(rules)`
    builds the program with those rules; `correct` are the trainset indices of the correct sample."""
    kept, checks = [], checked(rules, mistakes, correct, max_sources)
    for rule in rules:
        own = checks[rule.id][:len(checks[rule.id]) - len(correct)]
        scores = evaluator(program_with([rule]), checks[rule.id])
        fixed = [i for i, s in zip(own, scores, strict=False) if s >= threshold]
        broken = [i for i, s in zip(correct, scores[len(own):], strict=True) if s < threshold]
        verdict = Verification(checked_mistakes=own, checked_correct=list(correct), fixed=fixed, broken=broken,
                               kept=len(fixed) >= min_fixed and len(broken) <= len(fixed))
        rule.verification = verdict.to_dict()
        logger.info("Verify: %s %s (%s): %s", rule.id, "kept" if verdict.kept else "dropped", verdict.describe(),
                    rule.text)
        on_rule(rule)
        if verdict.kept:
            kept.append(rule)
    return kept
