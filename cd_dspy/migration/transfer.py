"""A rulebook's transfer check: does it help another target LM, without a teacher?

`check_rulebook` applies a rulebook's pinned and free rules to a program run by `target_lm` and scores the
program with and without them on the same held-out examples: the paired difference with its 95%
interval and McNemar's exact test (the exact sign test on 0/1 scores). Records are stored per example in
`run_dir` (when given), so a rerun, or another rulebook checked on the same model, repeats no call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dspy

from cd_dspy.config import default_threads
from cd_dspy.core import validation
from cd_dspy.core.heldout import HeldOutRunner
from cd_dspy.core.progress import Progress
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.stats import paired_difference, score_summary
from cd_dspy.phases.integrate import with_rules
from cd_dspy.phases.rulebook import Rulebook, load_rulebook


@dataclass
class TransferCheck:
    """A rulebook applied to one target LM: scores without and with its rules on the same examples."""

    rulebook: str
    model: str
    learned_on: str | None  # the target the rulebook was learned for, when it says
    rules: int
    n: int
    without: dict[str, float]  # stats.score_summary
    with_rules: dict[str, float]
    comparison: dict[str, Any]  # stats.Comparison (with rules vs without)

    def describe(self) -> str:
        c = self.comparison
        reading = ("not distinguishable" if c["p_two_sided"] >= 0.05 else
                   "better with the rules" if c["difference"] > 0 else "worse with the rules")
        return (f"{self.rules} rules of {self.rulebook} on {self.model} ({self.n} examples): "
                f"{self.without['score']:.1f} -> {self.with_rules['score']:.1f}, difference {c['difference']:+.1f} "
                f"[95% CI {c['low']:+.1f}, {c['high']:+.1f}], {c['wins']} fixed / {c['losses']} broken, McNemar "
                f"exact p = {c['p_two_sided']:.3g}: {reading}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_rulebook(program: dspy.Module, rulebook: str | os.PathLike | Rulebook, target_lm: dspy.BaseLM,
                   metric: Callable, testset: Sequence[dspy.Example], *, run_dir: str | os.PathLike | None = None,
                   num_threads: int | None = None, conditional: bool = False,
                   progress: bool = False) -> TransferCheck:
    """Score `program` on `target_lm` with and without the rulebook's pinned and free rules (no teacher)."""
    book = load_rulebook(rulebook)
    validation.check_program(program)
    if not isinstance(target_lm, dspy.BaseLM):
        raise TypeError(f"target_lm must be a dspy.LM, got {type(target_lm).__name__}.")
    testset = validation.check_examples(testset, "testset")
    book.check_predictors(program)
    rules = book.applied()
    if not rules:
        raise ValueError(f"{book.path or 'the rulebook'} has no pinned or free rule to apply; set a rule's status "
                         "to pinned or free.")
    run = RunDir(run_dir)
    run.claim()  # before any LM call: a non-empty folder cd-dspy did not make is refused
    runner = HeldOutRunner(testset, metric, run_dir=run, progress=Progress(enabled=progress),
                           num_threads=num_threads or default_threads(target_lm))
    without = runner.run(with_rules(program, [], lm=target_lm), f"{target_lm.model} without rules")
    applied = runner.run(with_rules(program, rules, lm=target_lm, conditional=conditional),
                         f"{target_lm.model} with rules")
    before, after = [r.score for r in without], [r.score for r in applied]
    return TransferCheck(rulebook=str(book.path or "rulebook"), model=target_lm.model,
                         learned_on=book.learned.get("target"), rules=len(rules), n=len(testset),
                         without=score_summary(before), with_rules=score_summary(after),
                         comparison=paired_difference(after, before).to_dict())
