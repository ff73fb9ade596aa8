"""Verification on workers: the worker processes of the search (`cd_dspy.scale.workers`) also try the candidate rules.

With `workers=`, the compile publishes a second study, `<study_name>-verify-<scope>`, before the search:
one enqueued trial per rule (its parameters name that rule alone), whose objective scores the rule on
its verification examples (its source mistakes and the shared correct sample). Workers take these
trials like search trials (heartbeats, retries of a dead worker's trial, scores in the shared
`ScoreStore` as each example is scored). The main process waits, then runs `verify.verify_rules`
itself: every score is in the store by then, so it pays nothing and decides exactly as one process does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dspy

from cd_dspy.core import keys
from cd_dspy.core.evaluation import CachedEvaluator
from cd_dspy.core.result import Rule
from cd_dspy.core.usage import BudgetExhausted
from cd_dspy.phases.search import delete_study
from cd_dspy.scale.workers import STATE, DistributedSelector, distributed_selector, planned_params


def verify_objective(program_with: Callable[[Sequence[Rule]], dspy.Module], rules: Sequence[Rule],
                     evaluator: CachedEvaluator, checks: dict[str, list[int]]) -> Callable[[Any], float]:
    """A trial's objective: the one rule its parameters name, scored alone on that rule's verification examples."""

    def objective(trial: Any) -> float:
        [rule] = [r for r in rules if trial.suggest_categorical(r.id, [0, 1])]
        scores = evaluator(program_with([rule]), checks[rule.id])
        return 100.0 * sum(scores) / max(1, len(scores))

    return objective


class VerifySelector(DistributedSelector):
    """Enqueues one trial per rule and waits until workers (or the main, `evaluate_in_main`) scored them all."""

    def __init__(self, *args: Any, checks: dict[str, list[int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.checks = checks
        self._objective = verify_objective(self.program_with, self.rules, self.evaluator, checks)

    def run(self) -> None:
        try:
            planned = {tuple(sorted(k for k, v in planned_params(t).items() if v)) for t in self._all()}
            for rule in self.rules:
                if (rule.id,) not in planned:
                    self._enqueue({r.id: int(r is rule) for r in self.rules}, "verify")
            self._settle()
        except BudgetExhausted:  # the trial this process was scoring is failed, not left running (Optuna skips it)
            self.fail_interrupted()
            raise
        finally:
            self.study.set_user_attr(STATE, {**self.study.user_attrs.get(STATE, {}), "state": "done"})


def verify_on_workers(cd: Any, base: dspy.Module, rules: Sequence[Rule], checks: dict[str, list[int]],
                      evaluator: CachedEvaluator, storage: str | None, progress: Any) -> None:
    """Have the workers score every rule on its `checks` (into the shared store `evaluator` then reads)."""
    scope = keys.digest([sorted(checks.items()), evaluator.examples_key])[:10]
    study_name = f"{cd.study_name}-verify-{scope}"
    if not cd.resume:
        delete_study(study_name, storage)
    selector = distributed_selector(cd, base, list(rules), evaluator, sorted({i for c in checks.values() for i in c}),
                                    storage=storage, study_name=study_name, on_trial=None, progress=progress,
                                    kind=VerifySelector, extra={"verify": checks}, checks=checks)
    selector.run()
