"""Shared fixtures: simulated target/teacher LMs and their problem sets."""

from __future__ import annotations

import dspy
import pytest

from cd_dspy.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits


class SimWorld:
    """Fresh simulated engines (with call counters), their LMs, data and a builder for the optimizer."""

    def __init__(self, tmp_path):
        self.target_engine, self.teacher_engine = SimulatedTarget(), SimulatedTeacher()
        self.target = dspy.LM("simulated/target", engine=self.target_engine, cache=False)
        self.teacher = dspy.LM("simulated/teacher", engine=self.teacher_engine, cache=False)
        self.trainset, self.valset = simulated_splits(16, 40, seed=1)
        self.metric = answer_match
        self.tmp_path = tmp_path

    def optimizer(self, **settings):
        from cd_dspy import ConceptDistillation

        settings.setdefault("run_dir", self.tmp_path / "run")
        settings.setdefault("progress", False)
        settings.setdefault("num_trials", 16)
        settings.setdefault("metric", self.metric)
        return ConceptDistillation(teacher_lm=self.teacher, target_lm=self.target, seed=0, **settings)


@pytest.fixture
def sim(tmp_path) -> SimWorld:
    return SimWorld(tmp_path)
