"""Unreliable LMs: injected timeouts, rate limits, empty and malformed replies, engine crashes."""

from __future__ import annotations

import json
import random

import dspy
import pytest
from dspy.utils.exceptions import LMTimeoutError

from cd_dspy.core.evaluation import CachedEvaluator, ScoredMetric
from cd_dspy.core.failures import LMUnavailableError
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import UsageMeter
from cd_dspy.testing.faults import FAULT_KINDS, FaultyEngine, simulated_faulty_compile
from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits

QUESTION = "A coat costs 50 dollars and is 10 percent off. What does the coat cost now?"


def test_fault_pattern_is_seeded_and_independent_of_call_order():
    keys = [f"request-{i}" for i in range(3000)]
    a, b = FaultyEngine(None, rate=0.2, seed=7), FaultyEngine(None, rate=0.2, seed=7)
    shuffled = random.Random(0).sample(keys, len(keys))
    first = {k: [a.fault_for(k, n) for n in range(3)] for k in keys}
    second = {k: [b.fault_for(k, n) for n in range(3)] for k in shuffled}
    assert first == second
    rate = sum(f[0] is not None for f in first.values()) / len(keys)
    assert 0.17 < rate < 0.23
    assert {f[0] for f in first.values()} - {None} == set(FAULT_KINDS)
    assert first != {k: [FaultyEngine(None, rate=0.2, seed=8).fault_for(k, n) for n in range(3)] for k in keys}
    with pytest.raises(ValueError, match="kinds"):
        FaultyEngine(None, kinds=("gremlins",))


class FailTwice(FaultyEngine):
    """Rate-limits the first two attempts of every request, then answers."""

    def fault_for(self, key, attempt):
        return "rate_limit" if attempt < 2 else None


def test_dspy_retries_retryable_faults_with_exponential_backoff():
    engine = FailTwice(SimulatedTarget(), backoff=0.02)
    predict = dspy.Predict("question -> answer: float")
    predict.set_lm(dspy.LM("simulated/target", engine=engine, cache=False, num_retries=3))
    assert predict(question=QUESTION).answer == 40.0  # the simulated target's percent blind spot
    assert engine.stats.calls == 3 and engine.stats.retried == 2
    gaps = dict(engine.stats.retry_gaps())
    assert gaps[1] >= 0.02 * 0.9 and gaps[2] >= 0.04 * 0.9 and gaps[2] > gaps[1]  # backs off, exponentially

    timeouts = FaultyEngine(SimulatedTarget(), rate=1.0, kinds=("timeout",), backoff=0.001)
    predict.set_lm(dspy.LM("simulated/target", engine=timeouts, cache=False, num_retries=2))
    with pytest.raises(LMTimeoutError):
        predict(question=QUESTION)
    assert timeouts.stats.calls == 3  # one attempt plus num_retries


def faulty_evaluator(tmp_path, engine, n=4):
    program = dspy.Predict("question -> answer: float")
    program.set_lm(dspy.LM("simulated/target", engine=engine, cache=False, num_retries=1))
    valset = simulated_splits(n, seed=2)[0]
    meter = UsageMeter()
    return program, CachedEvaluator(valset, ScoredMetric(answer_match), run_dir=RunDir(tmp_path), meter=meter,
                                    num_threads=1), meter


@pytest.mark.parametrize("kind", ["exception", "timeout"])
def test_a_target_failing_on_every_example_is_an_outage_not_a_score(tmp_path, kind):
    engine = FaultyEngine(SimulatedTarget(), rate=1.0, kinds=(kind,), backoff=0.0)
    program, evaluator, meter = faulty_evaluator(tmp_path, engine)
    with dspy.context(callbacks=[meter], usage_tracker=meter):
        with pytest.raises(LMUnavailableError, match="target LM 'simulated/target' is unavailable"):
            evaluator(program, [0, 1, 2, 3])
    assert engine.stats.injected == engine.stats.calls >= 4
    assert not (tmp_path / "evaluations.jsonl").exists()  # nothing stored as finished work


@pytest.mark.parametrize("kind", ["empty", "malformed"])
def test_unparseable_replies_are_failed_examples_not_an_outage(tmp_path, kind):
    """A rule can break the output format: every reply failing to parse scores 0 (and is not stored,
    so a rerun retries it) instead of stopping the compile as an LM outage."""
    engine = FaultyEngine(SimulatedTarget(), rate=1.0, kinds=(kind,), backoff=0.0)
    program, evaluator, meter = faulty_evaluator(tmp_path, engine)
    with dspy.context(callbacks=[meter], usage_tracker=meter):
        assert evaluator(program, [0, 1, 2, 3]) == [0.0] * 4
    assert meter.usage["target"].failures["failed_example"] == 4
    assert not (tmp_path / "evaluations.jsonl").exists()


def test_failed_examples_score_zero_now_and_are_retried_on_the_next_run(tmp_path, caplog):
    engine = FaultyEngine(SimulatedTarget(), rate=0.5, seed=1, kinds=("exception",), backoff=0.0)
    program, evaluator, meter = faulty_evaluator(tmp_path, engine, n=8)
    with dspy.context(callbacks=[meter], usage_tracker=meter), caplog.at_level("WARNING"):
        scores = evaluator(program, list(range(8)))
    failed = [i for i in range(8) if not [r for r in _logged(tmp_path) if r["index"] == i]]
    assert failed and all(scores[i] == 0.0 for i in failed)
    assert meter.usage["target"].failures["failed_example"] == len(failed)
    assert meter.usage["target"].failures["error"] >= len(failed)  # each failed call, counted by kind
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "failed" in r.getMessage()]
    assert len([w for w in warnings if w.name == "cd_dspy.core.evaluation"]) == len(failed)
    assert all("\n" not in w.getMessage() for w in warnings)  # one line each, no LM reply dump
    # a rerun with a healthy LM calls the target only for the examples that failed
    healthy = FaultyEngine(SimulatedTarget(), rate=0.0)
    program.set_lm(dspy.LM("simulated/target", engine=healthy, cache=False))
    again = CachedEvaluator(evaluator.examples, ScoredMetric(answer_match), run_dir=RunDir(tmp_path),
                            meter=UsageMeter(), num_threads=1)
    again(program, list(range(8)))
    assert healthy.stats.calls == len(failed)


def _logged(tmp_path):
    return [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]


def test_a_teacher_failing_on_every_mistake_stops_loudly_and_stores_nothing(sim, caplog):
    sim.teacher_engine = FaultyEngine(SimulatedTeacher(), rate=1.0, kinds=("malformed", "empty"), backoff=0.0)
    sim.teacher = dspy.LM("simulated/teacher", engine=sim.teacher_engine, cache=False)
    cd = sim.optimizer(num_trials=6, teacher_retries=2)
    program = dspy.ChainOfThought("question -> answer: float")
    with pytest.raises(LMUnavailableError, match="teacher LM 'simulated/teacher' is unavailable.*every one of"):
        cd.compile(program, trainset=sim.trainset[:8], valset=sim.valset)
    run = sim.tmp_path / "run"
    assert not (run / "explanations.jsonl").exists() and not (run / "rules.json").exists()
    assert not (run / "solutions.jsonl").exists()  # a failed solution is never stored as finished work
    assert "Solve: the teacher failed on mistake" in caplog.text  # the first teacher step: solving the mistakes


def test_teacher_recovers_from_some_unparseable_replies(sim):
    sim.teacher_engine = FaultyEngine(SimulatedTeacher(), rate=0.5, seed=3, kinds=("malformed",), backoff=0.0)
    sim.teacher = dspy.LM("simulated/teacher", engine=sim.teacher_engine, cache=False)
    cd = sim.optimizer(num_trials=8)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    explanations = [json.loads(x) for x in (sim.tmp_path / "run" / "explanations.jsonl").read_text().splitlines()]
    assert sim.teacher_engine.stats.faults["malformed"] > 0
    assert sum(e["ok"] for e in explanations) > 0 and cd.result.improved


def test_compile_survives_twenty_percent_faults_on_both_lms(tmp_path):
    figures = simulated_faulty_compile(tmp_path / "run", rate=0.2, seed=0, backoff=0.001, num_trials=8)
    target, teacher = figures["target"], figures["teacher"]
    assert target["faults_injected"] > 0 and teacher["faults_injected"] > 0
    assert set(target["faults_by_kind"]) | set(teacher["faults_by_kind"]) == set(FAULT_KINDS)
    assert target["retries_after_retryable_faults"] + teacher["retries_after_retryable_faults"] > 0
    result = figures["_result"]
    assert result.baseline_score is not None and result.best_score is not None
    assert result.improved and figures["best_score"] > figures["baseline_score"]
    failed = [t for t in result.trials if t.state == "fail"]
    assert not failed  # faults become failure scores inside trials, never failed trials
    print("\n[reliability] " + json.dumps({k: v for k, v in figures.items() if not k.startswith("_")}))
