"""A migration in the simulated world: the simulated teacher is the source (it solves every problem kind),
the simulated target the cheaper model (blind spots that CD's rules remove)."""

from __future__ import annotations

from collections.abc import Callable

import dspy
import pytest

from cd_dspy.migration import MigrationReport, migrate
from cd_dspy.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits

PRICES = {"simulated/simulated-teacher": [10.0, 30.0], "simulated-target": [0.5, 1.5]}  # $/Mtok, made up for tests
COT = "question -> answer: float"


class Migration:
    """Fresh simulated LMs (their engines count calls) and disjoint train / val / test splits."""

    def __init__(self, n_test: int = 40):
        self.source_engine, self.target_engine = SimulatedTeacher(), SimulatedTarget()
        self.source = dspy.LM("simulated/simulated-teacher", engine=self.source_engine, cache=False)
        self.target = dspy.LM("simulated/simulated-target", engine=self.target_engine, cache=False)
        self.trainset, self.valset, self.testset = simulated_splits(16, 40, n_test, seed=1)

    def run(self, run_dir, **settings) -> MigrationReport:
        settings.setdefault("num_trials", 16)
        settings.setdefault("progress", False)
        return migrate(dspy.ChainOfThought(COT), source_lm=self.source, target_lm=self.target, metric=answer_match,
                       trainset=self.trainset, valset=self.valset, testset=self.testset, run_dir=run_dir,
                       **settings)


def raises_naming(error: type[BaseException] | tuple, call: Callable[[], object], words: list[str]) -> None:
    """`call()` raises `error` with a message holding every one of `words` (the problem and its fix)."""
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
