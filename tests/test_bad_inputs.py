"""Bad input: each case raises (or warns) with a message that names the problem and the fix."""

from __future__ import annotations

import json
import logging
import math
import shutil

import dspy
import pytest

from cd_dspy import ConceptDistillation
from cd_dspy.config import grouped
from cd_dspy.core.evaluation import MetricError
from cd_dspy.core.run_dir import RunDirError

COT = "question -> answer: float"


def program():
    return dspy.ChainOfThought(COT)


def compile_with(sim, metric=None, **settings):
    cd = ConceptDistillation(**grouped(metric=metric or sim.metric, teacher_lm=sim.teacher, target_lm=sim.target,
                             run_dir=settings.pop("run_dir", sim.tmp_path / "run"), progress=False,
                             num_trials=settings.pop("num_trials", 4), **settings))
    return cd


# -- datasets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("trainset, error, words", [
    ([], ValueError, ["trainset is empty", "needs examples"]),
    (None, TypeError, ["trainset must be a list of dspy.Example", "NoneType"]),
    ("question,answer", TypeError, ["trainset must be a list of dspy.Example", "str"]),
    ([{"question": "1+1?", "answer": 2}], TypeError, ["trainset[0] is a dict", "dspy.Example(", ".with_inputs("]),
    ([dspy.Example(question="1+1?", answer=2)], ValueError, ["trainset[0] has no input fields", ".with_inputs("]),
])
def test_bad_trainset(sim, trainset, error, words):
    with pytest.raises(error) as info:
        compile_with(sim).compile(program(), trainset=trainset, valset=sim.valset)
    for word in words:
        assert word in str(info.value)
    assert sim.target_engine.calls == 0


def test_bad_valset_item_names_the_valset(sim):
    with pytest.raises(ValueError, match=r"valset\[1\] has no input fields.*with_inputs"):
        compile_with(sim).compile(program(), trainset=sim.trainset,
                                  valset=[sim.valset[0], dspy.Example(question="2+2?", answer=4)])


def test_too_few_examples_to_search_and_confirm(sim):
    with pytest.raises(ValueError, match="at least 3 examples.*pass more examples or a valset"):
        compile_with(sim).compile(program(), trainset=sim.trainset[:2])
    with pytest.raises(ValueError, match="valset needs at least 2 examples.*pass a larger valset"):
        compile_with(sim).compile(program(), trainset=sim.trainset, valset=sim.valset[:1])


@pytest.mark.parametrize("setting, value, message", [
    ("confirm_fraction", 1.0, "confirm_fraction must be between 0 and 1"),
    ("confirm_top_k", 0, "confirm_top_k must be an int of at least 1"),
    ("require_significance", 5, "require_significance must be a level between 0 and 1"),
    ("samples_per_mistake", 0, "samples_per_mistake must be an int of at least 1"),
    ("verify_correct", -1, "verify_correct must be an int of at least 0"),
])
def test_bad_decision_settings(sim, setting, value, message):
    with pytest.raises(ValueError, match=message):
        sim.optimizer(**{setting: value})


def test_overlapping_train_and_val_warns(sim, caplog):
    cd = compile_with(sim, num_trials=4)
    with caplog.at_level(logging.WARNING, logger="cd_dspy"):
        cd.compile(program(), trainset=sim.trainset[:4], valset=sim.trainset[2:6])
    assert "2 of 4 valset examples are also in the trainset" in caplog.text
    assert "use disjoint splits" in caplog.text


# -- metrics ---------------------------------------------------------------------------------------

def raising_metric(example, prediction, trace=None):
    raise KeyError("answer_text")


@pytest.mark.parametrize("metric, words", [
    (raising_metric, ["raising_metric", "raised KeyError", "Fix the metric"]),
    (lambda e, p, t=None: "yes", ["returned 'yes' (str)", "must return a bool, a finite number"]),
    (lambda e, p, t=None: None, ["returned None", "must return a bool, a finite number"]),
    (lambda e, p, t=None: math.nan, ["returned nan", "must return a bool, a finite number"]),
    (lambda e, p, t=None: dspy.Prediction(score="high", feedback="ok"), ["returned 'high'", "score=..."]),
])
def test_bad_metric(sim, metric, words):
    with pytest.raises(MetricError) as info:
        compile_with(sim, metric=metric).compile(program(), trainset=sim.trainset[:4], valset=sim.valset[:4])
    for word in words:
        assert word in str(info.value)
    assert sim.teacher_engine.calls == 0  # stopped before spending teacher calls


def test_metric_not_callable(sim):
    with pytest.raises(TypeError, match="metric must be a callable metric\\(example, prediction, trace=None\\)"):
        ConceptDistillation(metric="accuracy", teacher_lm=sim.teacher)


# -- programs and LMs ------------------------------------------------------------------------------

class NoPredictors(dspy.Module):
    def forward(self, question):
        return dspy.Prediction(answer=question)


def test_program_without_predictors(sim):
    with pytest.raises(ValueError, match="NoPredictors has no predictors.*add one as an attribute"):
        compile_with(sim).compile(NoPredictors(), trainset=sim.trainset, valset=sim.valset)


def test_program_not_a_module(sim):
    with pytest.raises(TypeError, match="must be a dspy.Module, got function"):
        compile_with(sim).compile(lambda question: question, trainset=sim.trainset, valset=sim.valset)


def test_no_teacher(sim):
    with pytest.raises(ValueError, match="needs a teacher_lm.*teacher_lm=dspy.LM"):
        ConceptDistillation(metric=sim.metric)


def test_teacher_not_an_lm(sim):
    with pytest.raises(TypeError, match="teacher_lm must be a dspy.LM.*got str"):
        ConceptDistillation(metric=sim.metric, teacher_lm="openai/gpt-4o")


def test_compile_teacher_not_an_lm(sim):
    with pytest.raises(TypeError, match=r"compile\(teacher=...\) takes a teacher LM.*teacher_lm="):
        compile_with(sim).compile(program(), trainset=sim.trainset, valset=sim.valset, teacher=program())


def test_compile_unknown_argument(sim):
    with pytest.raises(TypeError, match=r"unexpected arguments \['max_bootstrapped_demos'\]"):
        compile_with(sim).compile(program(), trainset=sim.trainset, max_bootstrapped_demos=4)


def test_teacher_is_the_target_warns(sim, caplog):
    cd = ConceptDistillation(metric=sim.metric, teacher_lm=sim.target, target_lm=sim.target, num_trials=4,
                             run_dir=sim.tmp_path / "run", progress=False)
    # the target cannot solve its own mistakes: no checked solution, no concept, the program comes back as it was
    with caplog.at_level(logging.WARNING, logger="cd_dspy"):
        compiled = cd.compile(program(), trainset=sim.trainset[:4], valset=sim.valset[:4])
    assert "The teacher LM is the target LM" in caplog.text and "stronger teacher" in caplog.text
    assert cd.result.n_solved == 0 and "The teacher solved 0 of the" in cd.result.message
    assert compiled.predict.signature.instructions == program().predict.signature.instructions
    assert compiled.predict.demos == []


def test_no_target_lm(sim):
    cd = ConceptDistillation(metric=sim.metric, teacher_lm=sim.teacher, run_dir=None, progress=False)
    with dspy.context(lm=None), pytest.raises(ValueError, match="No target LM: pass target_lm=.*dspy.configure"):
        cd.compile(program(), trainset=sim.trainset, valset=sim.valset)


def test_target_not_an_lm(sim):
    cd = ConceptDistillation(metric=sim.metric, teacher_lm=sim.teacher, target_lm="gpt-4o-mini", progress=False)
    with pytest.raises(TypeError, match="target_lm must be a dspy.LM"):
        cd.compile(program(), trainset=sim.trainset, valset=sim.valset)


def test_unknown_local_model():
    lms = pytest.importorskip("cd_dspy.lms")
    with pytest.raises(ValueError, match="Unknown local model 'no-such-model'. Catalog models: .*gguf"):
        lms.local_lm("no-such-model")


# -- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, error, pattern", [
    ({"auto": "extreme"}, ValueError, r"auto must be one of \['heavy', 'light', 'medium'\] or None, got 'extreme'"),
    ({"num_trials": 0}, ValueError, "num_trials must be a positive int or None, got 0"),
    ({"num_trials": 2.5}, ValueError, "num_trials must be a positive int or None, got 2.5"),
    ({"num_trials": "10"}, ValueError, "num_trials must be a positive int or None, got '10'"),
    ({"max_mistakes": -1}, ValueError, "max_mistakes must be a positive int"),
    ({"num_threads": 0}, ValueError, "num_threads must be a positive int"),
    ({"valset_fraction": 1.5}, ValueError, "valset_fraction must be between 0 and 1"),
    ({"seed": "zero"}, TypeError, "seed must be an int"),
    ({"storage": "study.db"}, ValueError, "storage must be an Optuna storage URL such as 'sqlite:///"),
    ({"storage": "redis://localhost/0"}, ValueError, "scheme 'redis' is not an Optuna RDB storage; use e.g. 'sqlite"),
    ({"max_target_calls": -5}, ValueError, "max_target_calls must be a non-negative number or None"),
])
def test_bad_settings(sim, settings, error, pattern):
    with pytest.raises(error, match=pattern):
        ConceptDistillation(**grouped(metric=sim.metric, teacher_lm=sim.teacher, **settings))


# -- run directories -------------------------------------------------------------------------------

def test_run_dir_under_a_regular_file(sim, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cd = compile_with(sim, run_dir=blocker / "run")
    with pytest.raises(RunDirError, match="is not a writable directory.*run_dir=None"):
        cd.compile(program(), trainset=sim.trainset, valset=sim.valset)
    assert sim.target_engine.calls == 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished compile whose run_dir the corruption tests copy."""
    from conftest import SimWorld

    world = SimWorld(tmp_path_factory.mktemp("finished"))
    cd = compile_with(world, num_trials=4)
    cd.compile(program(), trainset=world.trainset[:8], valset=world.valset[:4])
    return world.tmp_path / "run"


@pytest.mark.parametrize("name", ["mistakes.json", "rules.json", "fingerprint.json", "progress.json"])
def test_corrupt_artifact_names_the_file_and_the_fix(sim, finished_run, name):
    run = sim.tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "result.json").unlink()
    text = (run / name).read_text()
    (run / name).write_text(text[: len(text) // 2])  # a truncated file
    with pytest.raises(RunDirError) as info:
        compile_with(sim).compile(program(), trainset=sim.trainset[:8], valset=sim.valset[:4])
    message = str(info.value)
    assert name in message and "corrupt" in message
    assert "delete it" in message and "fresh run_dir" in message


def test_run_dir_from_a_compile_on_other_data_redoes_the_work(sim, finished_run):
    run = sim.tmp_path / "run"
    shutil.copytree(finished_run, run)
    other = sim.trainset[1:9]
    compile_with(sim).compile(program(), trainset=other, valset=sim.valset[:4])
    assert sim.target_engine.calls >= len(other)  # collect was redone on the new data...
    questions = {e.question for e in other}
    mistakes = json.loads((run / "mistakes.json").read_text())["mistakes"]
    assert all(m["inputs"]["question"] in questions for m in mistakes)  # ...and nothing stale was kept


