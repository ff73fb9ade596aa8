"""A migration in the simulated world: the simulated teacher is the source (it solves every problem kind),
the simulated target the cheaper model (blind spots that CD's rules remove). `SimulatedWeights` stands in for
LoRA SFT (`migration.levers.WeightsBackend`): the "tuned" target has learnt the helpful rule of every problem kind
in its training records."""

from __future__ import annotations

from collections.abc import Callable

import dspy
import pytest
from dspy.clients.provider import Provider, TrainingJob

from cd_dspy.migration.api import MigrationReport, migrate
from cd_dspy.migration.levers import WeightsBackend
from cd_dspy.testing.simulated import (
    HELPFUL_RULES,
    SimulatedTarget,
    SimulatedTeacher,
    answer_match,
    kind_of,
    simulated_splits,
)

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
        """The migration with CD alone by default (the classic report); pass levers=... to compare levers."""
        settings.setdefault("num_trials", 16)
        settings.setdefault("progress", False)
        settings.setdefault("levers", ["cd"])
        settings.setdefault("carrier", "rules")  # this world's helpful concepts are rules
        return migrate(dspy.ChainOfThought(COT), source_lm=self.source, target_lm=self.target, metric=answer_match,
                       trainset=self.trainset, valset=self.valset, testset=self.testset, run_dir=run_dir,
                       **settings)


class TunedTarget(SimulatedTarget):
    """The simulated target after "SFT": it knows the helpful rule of each problem kind it was trained on."""

    model = "simulated-target-sft"

    def __init__(self, kinds=()):
        super().__init__()
        self.kinds = sorted(set(kinds))

    def respond(self, instructions, inputs, outputs):
        learnt = "".join(f"\n{HELPFUL_RULES[k]}" for k in self.kinds if k in HELPFUL_RULES)
        return super().respond(instructions + learnt, inputs, outputs)


class _Job(TrainingJob):
    kinds: list[str] = []

    def status(self):
        return "done"

    def set_result(self, result):  # DSPy hands back lm.copy(model=<tuned name>): serve the tuned engine
        if isinstance(result, dspy.LM):
            result = result.copy(engine=TunedTarget(self.kinds))
        super().set_result(result)


class _Provider(Provider):
    def __init__(self):
        super().__init__()
        self.finetunable, self.TrainingJob = True, _Job

    def finetune(self, job, model, train_data, train_data_format, train_kwargs=None):
        job.kinds = sorted({kind_of(m["content"]) for r in train_data for m in r["messages"]} - {None})
        return f"{model}+sft-{'-'.join(job.kinds)}"


class SimulatedWeights(WeightsBackend):
    """`migrate(sft_backend=SimulatedWeights())`: the SFT levers on the simulated target, no model trained."""

    def __init__(self):
        self.engines: list[TunedTarget] = []

    def finetunable(self, target, directory):
        return target.copy(provider=_Provider(), finetuning_model=target.model)

    def saved(self, tuned):
        self.engines.append(tuned.engine)
        return {"model": tuned.model, "kinds": tuned.engine.kinds}

    def restore(self, target, saved):
        engine = TunedTarget(saved["kinds"])
        self.engines.append(engine)
        return target.copy(model=saved["model"], engine=engine)


def raises_naming(error: type[BaseException] | tuple, call: Callable[[], object], words: list[str]) -> None:
    """`call()` raises `error` with a message holding every one of `words` (the problem and its fix)."""
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
