"""Keys cover the code that produced an artifact: a program's own classes (forward() and the helpers it calls), a
metric's source, closure values, defaults and referenced globals; the same code gives the same key in every
process; what cannot be keyed is redone, never replayed."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap

import dspy
import pytest

from cd_dspy.core import keys
from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.phases.collect import MISTAKES_FILE
from cd_dspy.phases.integrate import with_rules
from cd_dspy.testing.simulated import answer_match

PIPELINE = '''
import dspy

SCALE = {scale}


def tidy(text):
    return {tidy} if SCALE else text


class Pipeline(dspy.Module):
    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.answer = dspy.ChainOfThought("question -> answer: float")

    def forward(self, question):
        return self.answer(question={question})
'''


def pipeline_source(scale: int = 1, tidy: str = "text.strip()", question: str = "tidy(question)") -> str:
    return PIPELINE.format(scale=scale, tidy=tidy, question=question)


def load(tmp_path, monkeypatch, name: str, source: str):
    """`source` written to tmp_path/`name`.py and imported as module `name` (a fresh import each call, as a rerun
    after editing the file would)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # inspect finds a class's source through its module
    spec.loader.exec_module(module)
    return module


def exec_module(source: str, name: str = "user_code") -> dict:
    """`source` exec'd (no file, so no source for inspect: the keys fall back to the bytecode)."""
    namespace = {"__name__": name}
    exec(compile(textwrap.dedent(source), "<user code>", "exec"), namespace)  # noqa: S102 - the test's own code
    return namespace


def collect_key(sim, program: dspy.Module, metric=answer_match) -> str:
    cd = sim.optimizer(metric=metric)
    return keys.phase_keys(cd, with_rules(program, [], lm=sim.target), sim.trainset, sim.valset)["collect"]


# --- the program's code --------------------------------------------------------------------------------------

def test_editing_forward_changes_the_collect_key(sim, tmp_path, monkeypatch):
    before = load(tmp_path, monkeypatch, "user_pipeline", pipeline_source()).Pipeline()
    after = load(tmp_path, monkeypatch, "user_pipeline", pipeline_source(question="question.strip()")).Pipeline()
    assert type(before).__qualname__ == type(after).__qualname__  # the same class name, other forward()
    assert [n for n, _ in before.named_predictors()] == [n for n, _ in after.named_predictors()]
    assert collect_key(sim, before) != collect_key(sim, after)
    again = load(tmp_path, monkeypatch, "user_pipeline", pipeline_source()).Pipeline()
    assert collect_key(sim, again) == collect_key(sim, before)  # stable: the same code, the same key


def test_editing_forward_without_source_changes_the_key():
    """exec'd classes (no file): the key falls back to their bytecode, still free of addresses."""
    first = exec_module(pipeline_source())["Pipeline"]()
    edited = exec_module(pipeline_source(question="question.lower()"))["Pipeline"]()
    same = exec_module(pipeline_source())["Pipeline"]()
    assert keys.program_key(first) != keys.program_key(edited)
    assert keys.program_key(first) == keys.program_key(same)


def test_a_helper_forward_calls_its_constants_and_the_program_attributes_are_keyed(tmp_path, monkeypatch):
    def key(**kwargs) -> str:
        built = kwargs.pop("k", 3)
        return keys.program_key(load(tmp_path, monkeypatch, "user_pipeline", pipeline_source(**kwargs)).Pipeline(built))

    base = key()
    assert key(tidy="text.strip().lower()") != base  # the helper's source
    assert key(scale=2) != base  # a module constant (referenced by the helper)
    assert key(k=5) != base  # the module's own plain attribute (self.k)
    assert key() == base


def test_the_same_program_on_the_same_lm_keeps_its_key_through_copies(sim):
    """migration.py compares program keys: a deep copy (with_rules makes one) of the same program is unchanged."""
    program = exec_module(pipeline_source())["Pipeline"]()
    assert keys.program_key(with_rules(program, [], lm=sim.target)) == keys.program_key(
        with_rules(program.deepcopy(), [], lm=sim.target))
    assert keys.program_key(with_rules(program, [], lm=sim.target)) != keys.program_key(
        with_rules(program, [], lm=sim.teacher))


# --- the metric's code and values ----------------------------------------------------------------------------

def make_metric(tolerance: float):
    def within(example, prediction, trace=None):
        return abs(float(prediction.answer) - float(example.answer)) <= tolerance
    return within


def test_a_metric_closure_value_is_keyed():
    assert keys.metric_key(make_metric(0.5)) != keys.metric_key(make_metric(1.0))
    assert keys.metric_key(make_metric(0.5)) == keys.metric_key(ScoredMetric(make_metric(0.5)))


def test_a_metric_default_argument_is_keyed():
    def make(value: float):
        def metric(example, prediction, trace=None, tolerance=value):  # the default, not the closure, holds it
            return abs(float(prediction.answer) - float(example.answer)) <= tolerance
        return metric

    assert not make(0.5).__closure__
    assert keys.metric_key(make(0.5)) != keys.metric_key(make(0.9))
    assert keys.metric_key(make(0.5)) == keys.metric_key(make(0.5))


METRIC_MODULE = '''
UNITS = {units}


def normalize(text):
    return {normalize}


def metric(example, prediction, trace=None):
    return normalize(prediction.answer) == normalize(example.answer)
'''


@pytest.mark.parametrize("with_source", [True, False])
def test_a_module_level_helper_the_metric_calls_is_keyed(tmp_path, monkeypatch, with_source):
    def key(units: str = '{"km", "m", "cm"}', normalize: str = "str(text).strip()") -> str:
        source = METRIC_MODULE.format(units=units, normalize=normalize)
        module = load(tmp_path, monkeypatch, "user_metric", source) if with_source else None
        metric = module.metric if module else exec_module(source)["metric"]
        return keys.metric_key(metric)

    base = key()
    assert key(normalize="str(text).strip().lower()") != base  # the helper's source changed
    assert key(normalize="str(text).strip() in UNITS") != key(units='{"km"}', normalize="str(text).strip() in UNITS")
    assert key() == base  # the same metric defined again: the same key (no address, set order irrelevant)


class Threshold:  # a default repr (with an address) but plain attributes: keyed by class and attributes
    def __init__(self, value: float):
        self.value = value


def test_the_same_metric_defined_twice_gets_the_same_key():
    def build(value: float):
        limit = Threshold(value)

        def metric(example, prediction, trace=None):
            return float(prediction.answer) <= limit.value
        return metric

    assert "0x" in repr(Threshold(1.0))  # the repr would have made every key new
    assert keys.metric_key(build(1.0)) == keys.metric_key(build(1.0))
    assert keys.metric_key(build(1.0)) != keys.metric_key(build(2.0))


STABLE = '''
import dspy

WORDS = {"alpha", "beta", "gamma", "delta", "epsilon"}


class Limit:
    def __init__(self, value):
        self.value, self.tags = value, frozenset(WORDS)


LIMIT = Limit(3)
GOLD = dspy.Example(question="q", context="c", hint="h", answer="a").with_inputs("question", "context", "hint")


def metric(example, prediction, trace=None):
    return prediction.answer in WORDS and len(prediction.answer) < LIMIT.value and GOLD.answer


class Pipeline(dspy.Module):
    def __init__(self):
        super().__init__()
        self.words = set(WORDS)
        self.step = dspy.Predict("question -> answer")

    def forward(self, question):
        return self.step(question=question)
'''

PRINT_KEYS = ("import importlib.util, sys; from cd_dspy.core import keys; "
              "spec = importlib.util.spec_from_file_location('user_stable', sys.argv[1]); "
              "m = importlib.util.module_from_spec(spec); sys.modules['user_stable'] = m; spec.loader.exec_module(m); "
              "print(keys.metric_key(m.metric), keys.program_key(m.Pipeline()))")


def test_keys_are_the_same_in_another_process(tmp_path):
    """Workers and reruns compare keys across processes: no address, no hash-seed-dependent order."""
    path = tmp_path / "user_stable.py"
    path.write_text(STABLE)
    outputs = set()
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", PRINT_KEYS, str(path)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs.add(run.stdout.strip())
    assert len(outputs) == 1, outputs


class Handle:  # no address-free repr and no attributes to key (like a client or a C extension object)
    __slots__ = ("fd",)


def test_an_unkeyable_metric_warns_once_and_is_redone(monkeypatch, caplog):
    handle = Handle()

    def uses_a_handle(example, prediction, trace=None):
        return handle is not None

    with caplog.at_level(logging.WARNING, logger="cd_dspy"):
        first, second = keys.metric_key(uses_a_handle), keys.metric_key(ScoredMetric(uses_a_handle))
    warnings = [r.getMessage() for r in caplog.records if "cannot key" in r.getMessage()]
    assert len(warnings) == 1 and "closure value 'handle'" in warnings[0] and "redone" in warnings[0]
    assert first == second  # one process: one key (its evaluators and phases agree)
    monkeypatch.setattr(keys, "_PROCESS_NONCE", "another process")
    assert keys.metric_key(uses_a_handle) != first  # a rerun redoes its phases
    assert keys.metric_key(make_metric(0.5)) == keys.metric_key(make_metric(0.5))  # keyable ones: unaffected


# --- end to end ----------------------------------------------------------------------------------------------

def test_a_changed_metric_closure_redoes_collect(sim):
    """Compile, change the tolerance the metric closes over, compile again in the same run_dir: the mistakes are
    recomputed under the new metric, not replayed."""
    program = dspy.ChainOfThought("question -> answer: float")
    strict = sim.optimizer(metric=make_metric(1e-6), num_trials=4)
    strict.compile(program, trainset=sim.trainset[:8], valset=sim.valset)
    assert strict.result.n_mistakes > 0
    mistakes = sim.tmp_path / "run" / MISTAKES_FILE
    assert mistakes.exists() and mistakes.read_text().strip()
    calls = sim.target_engine.calls

    lenient = sim.optimizer(metric=make_metric(1e9), num_trials=4)  # every answer is now right
    lenient.compile(program, trainset=sim.trainset[:8], valset=sim.valset)
    assert lenient.result.n_mistakes == 0, "the strict metric's mistakes were replayed"
    assert sim.target_engine.calls > calls  # the target was asked again
