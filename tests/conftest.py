"""Shared fixtures: simulated target/teacher LMs and their problem sets; the example scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import dspy
import pytest
from sandbox_harness import host_dir, shared_dir  # noqa: F401  (the sandbox tests' directory fixtures)

from cd_dspy.config import grouped
from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(script: str):
    """examples/<script>.py as a module: examples/ goes on sys.path (the scripts import bench_lib) and the
    module into sys.modules (dataclasses look their module up there)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"cd_example_{script}", EXAMPLES / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
        settings.setdefault("carrier", "rules")  # this world's helpful concepts are rules (tests of exemplars say so)
        return ConceptDistillation(**grouped(teacher_lm=self.teacher, target_lm=self.target, seed=0, **settings))


@pytest.fixture
def sim(tmp_path) -> SimWorld:
    return SimWorld(tmp_path)
