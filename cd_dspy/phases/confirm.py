"""Phase 3b: decide on data the search never saw, in a fixed sequence of tests.

1. The primary subset, fixed before any validation score was seen (every concept the search got, the exemplars
   up to `max_exemplars`: the search's first "all" trial), is tested first on every validation example (search
   and confirmation parts) and the fresh training examples below: its choice did not depend on them, so all of
   them count, and a set of exemplars, whose effect is large but spread thin, gets the power it needs. If it
   fails, nothing else is tested and the program comes back unchanged.
2. When it passed, the `top_k` best subsets the search ranks above it that beat the baseline on the search part
   (the best of many there is optimistic: the winner's curse) are tested on the confirmation part and the fresh
   training examples only, Bonferroni-corrected over those subsets; the first accepted in the search's order
   replaces the primary subset. A fixed sequence (a later step runs only when the earlier one rejected its null) keeps
   the chance of accepting anything under pure noise at `alpha`. When the confirmation part alone could tell only
   gains of `SEARCH_RESOLUTION_LIMIT` points or more from noise, the search is skipped (`skipped_search_warning`)
   and step 1 is the whole decision: whether the program changes is decided as with the search.

A subset is accepted when it beats the baseline by more than `min_improvement` points and a one-sided exact sign
test (McNemar's exact test for 0/1 scores) is below `alpha`. Per-rule effects are designed comparisons on the
fresh examples: the chosen subset against the chosen subset without that rule (exemplar-only concepts work as a
set and get no effect of their own).

The fresh examples may also hold training examples (`fresh_training_examples`) that no screen scored and none
of the tested concepts came from. A subset of exemplars is tested on every training example but the mistakes its
exemplars solve: the target's answers on the others were seen by collect only, and the other solutions are not in
its prompt. A subset with a written rule is tested on the training examples the teacher never saw (a rule may draw
on every mistake shown to it). The examples left out are all target mistakes, so what remains holds fewer mistakes
than a random sample: under pure noise that only makes the sign test stricter (fixes are rarer than breaks), while
each example kept buys power.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from cd_dspy.core.evaluation import CachedEvaluator
from cd_dspy.core.result import ConceptDistillationResult, Rule
from cd_dspy.core.stats import Comparison, min_detectable_gain, min_wins_for_significance, paired_difference
from cd_dspy.phases.concepts import exemplar_sources, is_exemplar_only
from cd_dspy.phases.search import Selection

logger = logging.getLogger(__name__)

DETECTABLE_GAIN_WARNING = 10.0  # points: warn when the confirmation data cannot resolve smaller gains
SEARCH_RESOLUTION_LIMIT = 50.0  # points: no search when its picks could be accepted only with larger gains


@dataclass
class Decision:
    """The confirmed choice (empty when no subset was confirmed) and the evidence behind it."""

    chosen: list[str]
    baseline_score: float | None
    chosen_score: float | None
    comparison: Comparison | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    effects: dict[str, Comparison] = field(default_factory=dict)
    n_training: int = 0  # training examples in the decisive comparison (besides validation examples)


def confirm(selection: Selection, rules: Sequence[Rule], evaluator: CachedEvaluator, indices: Sequence[int], *,
            program_with: Callable[[Sequence[Rule]], dspy.Module], top_k: int, alpha: float | None,
            min_improvement: float, training: FreshTraining | None = None, search: Sequence[int] = ()) -> Decision:
    """Decide in a fixed sequence (see the module doc): the primary subset on `search` + `indices` + the fresh
    training examples, then, when it passed, the search's best subsets on `indices` + their fresh training examples."""
    by_id = {r.id: r for r in rules}

    def fresh(ids: Sequence[str], everywhere: bool = False) -> list[tuple[CachedEvaluator, list[int]]]:
        data = [(evaluator, (list(search) if everywhere else []) + list(indices))]
        more = training.indices_for([by_id[i] for i in ids]) if training else []
        return data + [(training.evaluator, more)] if more else data

    def scores_of(ids: Sequence[str], data) -> list[float]:
        program = program_with([by_id[i] for i in ids])
        return [score for scorer, where in data for score in scorer(program, where)]

    def tested(ids, search_score, scores, before, n_tests, step) -> tuple[bool, Comparison, dict]:
        result = paired_difference(scores, before)
        p_adjusted = min(1.0, result.p_greater * n_tests)
        accepted = result.difference > min_improvement and (alpha is None or p_adjusted < alpha)
        logger.info("Confirm (%s): %s search %s -> %s (p adjusted %.3g)%s", step, ids, search_score,
                    result.describe(), p_adjusted, " accepted" if accepted else "")
        return accepted, result, {"rule_ids": list(ids), "step": step, "search_score": search_score, "n": result.n,
                                  "score": result.after, "difference": result.difference,
                                  "interval": [result.low, result.high], "p_value": result.p_greater,
                                  "p_adjusted": p_adjusted, "accepted": accepted}

    candidates, chosen, comparison = [], [], None
    primary = selection.primary if search else []
    if primary:  # fixed before any validation score was seen: tested first, on every example
        data = fresh(primary, everywhere=True)
        accepted, comparison, record = tested(primary, selection.score_of(primary), scores_of(primary, data),
                                              scores_of([], data), 1, "primary")
        candidates.append(record)
        if not accepted:  # the sequence stops here: nothing else is tested
            return Decision([], comparison.before, comparison.before, None, candidates, {}, n_training(data))
        chosen = list(primary)
    ahead = selection.ranked_above(primary) if primary else None  # only what the search prefers may replace it
    shortlist = [(ids, score) for ids, score in selection.better_than_baseline(top_k)
                 if ahead is None or ids in ahead]
    confirmed = None  # the first shortlisted subset accepted, in the search's order
    for ids, search_score in shortlist:
        data = fresh(ids)
        accepted, result, record = tested(ids, search_score, scores_of(ids, data), scores_of([], data),
                                          len(shortlist), "search")
        candidates.append(record)
        if accepted and confirmed is None:
            confirmed = list(ids), result
    if confirmed is not None:
        chosen, comparison = confirmed
    effects, data = {}, fresh(chosen)
    if chosen:  # designed comparisons on the fresh examples: the chosen subset without each rule
        chosen_scores = scores_of(chosen, data)
        for rule_id in (i for i in chosen if i not in selection.exemplar_ids):
            effects[rule_id] = paired_difference(chosen_scores, scores_of([i for i in chosen if i != rule_id], data))
    if comparison:
        before, after = comparison.before, comparison.after
    else:
        baseline = scores_of([], data)
        before = after = 100.0 * sum(baseline) / max(1, len(baseline))
    return Decision(chosen, before, after, comparison, candidates, effects, n_training(data))


def n_training(data: Sequence[tuple[CachedEvaluator, Sequence[int]]]) -> int:
    """How many training examples a comparison on `data` holds (the parts after the validation part)."""
    return sum(len(where) for _, where in data[1:])


@dataclass
class FreshTraining:
    """The training examples a comparison may use besides the confirmation part: `indices_for(tested concepts)`."""

    evaluator: CachedEvaluator
    indices_for: Callable[[Sequence[Rule]], list[int]]


def fresh_training_examples(n_train: int, sampled: Mapping[str, int], rules: Sequence[Rule],
                            tested: Sequence[Rule]) -> list[int]:
    """Training indices fresh for a comparison of the concepts `tested`: never scored by the screen (any rule's
    verification), and not a mistake the teacher saw (`sampled`: mistake id -> training index); when every tested
    concept is an exemplar, only the mistakes their exemplars solve are left out (see the module doc)."""
    screened = {i for r in rules for key in ("checked_mistakes", "checked_correct")
                for i in (r.verification or {}).get(key, [])}
    if tested and all(is_exemplar_only(r) for r in tested):  # each carries its own problem and nothing else
        seen = {sampled[m] for r in tested for m in exemplar_sources(r) if m in sampled}
    else:
        seen = set(sampled.values())
    return sorted(set(range(n_train)) - seen - screened)


def split_sizes(n_val: int, confirm_fraction: float) -> tuple[int, int]:
    """(search, confirmation) sizes of a valset of `n_val` examples; each part gets at least one."""
    n_confirm = min(n_val - 1, max(1, round(n_val * confirm_fraction)))
    return n_val - n_confirm, n_confirm


def split_valset(n_val: int, result: ConceptDistillationResult, *, seed: int, confirm_fraction: float,
                 alpha: float | None, top_k: int) -> tuple[list[int], list[int]]:
    """Seeded disjoint (search, confirmation) index lists over a valset of `n_val` examples; their sizes,
    the smallest detectable gain and a warning when the confirmation part is too small go into `result`."""
    order = random.Random(seed + 1).sample(range(n_val), n_val)
    _, n_confirm = split_sizes(n_val, confirm_fraction)
    confirmation, search = sorted(order[:n_confirm]), sorted(order[n_confirm:])
    result.n_search, result.n_confirm = len(search), len(confirmation)
    result.min_detectable_gain, warning = small_sample_warning(len(confirmation), alpha, top_k, confirm_fraction)
    if warning:  # it concerns the search's picks; the primary subset is tested on the whole valset (and more)
        primary = min_detectable_gain(n_val, alpha if alpha is not None else 0.05, 1)
        shown = "no gain" if primary > 100 else f"gains of at least {primary:.0f} points"
        result.warnings.append(f"{warning} (The subset fixed before any score is tested first on all {n_val} "
                               f"validation examples and the fresh training examples: there {shown} can be told "
                               "from noise.)")
    return search, confirmation


def skipped_search_warning(n_val: int, alpha: float | None, top_k: int, confirm_fraction: float,
                           on_train: bool = True) -> str | None:
    """Why the search is skipped, or None when it runs. The search never decides whether the program changes
    (the primary subset's test does): it only ranks subsets that may replace a primary subset that passed, each
    tested on the confirmation part of the `n_val` validation examples (and fresh training examples) with
    Bonferroni over up to `top_k`. When the confirmation examples alone could tell only gains of
    `SEARCH_RESOLUTION_LIMIT` points or more from noise, that ranking rests on as few search examples and a
    replacement needs a far larger gain than the primary subset; the trials would cost most of a compile's target
    calls. With `alpha` None (the point estimate decides) the search always runs. The training examples are left
    out of this count: how many are fresh depends on the pick."""
    if alpha is None:
        return None
    _, n_confirm = split_sizes(n_val, confirm_fraction)
    gain = min_detectable_gain(n_confirm, alpha, top_k)
    if gain < SEARCH_RESOLUTION_LIMIT:
        return None
    needed = math.floor(min_wins_for_significance(alpha, top_k) * 100.0 / SEARCH_RESOLUTION_LIMIT) + 1
    shown = "not even a 100-point gain" if gain > 100 else f"only gains of at least {gain:.0f} points"
    training = " and the fresh training examples" if on_train else ""
    valset = math.ceil(needed / confirm_fraction)
    return (f"So the Optuna search was skipped: it only ranks subsets that may replace a primary subset that "
            f"passed, and on the {n_confirm} confirmation examples such a replacement is tested on, {shown} could "
            "be told from noise (the training examples it is also tested on are not counted here). Only the subset "
            "fixed before any score (every concept, the exemplars up to max_exemplars) was tested, on all "
            f"{n_val} validation examples{training}: whether the program changes is decided as with the search. "
            f"The search runs from {needed} confirmation examples on (a valset of about {valset} with "
            f"confirm_fraction={confirm_fraction:g}), and always with workers or require_significance=None.")


def small_sample_warning(n_confirm: int, alpha: float | None, top_k: int, confirm_fraction: float,
                         threshold: float = DETECTABLE_GAIN_WARNING) -> tuple[float, str | None]:
    """(the smallest detectable gain in points, a warning when it exceeds `threshold`)."""
    level = alpha if alpha is not None else 0.05
    gain = min_detectable_gain(n_confirm, level, top_k)
    if gain <= threshold:
        return gain, None
    wins = min_wins_for_significance(level, top_k)
    needed = math.ceil(100.0 * wins / threshold)
    valset = math.ceil(needed / confirm_fraction)
    shown = "no gain" if gain > 100 else f"only gains of at least {gain:.0f} points"
    return gain, (f"With {n_confirm} confirmation examples {shown} can be told from noise "
                  f"({wins} more examples right and none broken, sign test at {level:g} over {top_k} "
                  f"candidates). For gains of {threshold:.0f} points use about {needed} confirmation "
                  f"examples (a valset of about {valset} with confirm_fraction={confirm_fraction:g}).")
