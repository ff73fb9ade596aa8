"""The failure model (issue: outages stop loudly, resume never replays a wrong answer)."""

from __future__ import annotations

import json
import threading
import time

import dspy
import pytest

from cd_dspy.core.failures import LMUnavailableError, failure_kind, is_fatal
from cd_dspy.core.result import Rule
from cd_dspy.phases.integrate import with_rules
from cd_dspy.testing.faults import FaultyEngine
from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher

COT = "question -> answer: float"


def down(inner) -> FaultyEngine:
    return FaultyEngine(inner, rate=1.0, kinds=("refused",), backoff=0.0)


def test_teacher_down_then_fixed_then_rerun_produces_rules(sim):
    healthy = sim.teacher
    sim.teacher = dspy.LM("simulated/teacher", engine=down(SimulatedTeacher()), cache=False)
    with pytest.raises(LMUnavailableError, match="teacher LM 'simulated/teacher' is unavailable.*ConnectionRefused"):
        sim.optimizer().compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    assert (run / "mistakes.json").exists()  # the target's work is kept
    assert not (run / "explanations.jsonl").exists() and not (run / "rules.json").exists()
    sim.teacher = healthy  # the server is back
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    assert cd.result.rules and cd.result.improved


def test_target_down_is_an_error_not_no_mistakes(sim):
    sim.target = dspy.LM("simulated/target", engine=down(SimulatedTarget()), cache=False)
    cd = sim.optimizer()
    with pytest.raises(LMUnavailableError, match="target LM 'simulated/target' is unavailable"):
        cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    assert not (run / "collect.jsonl").exists() and not (run / "mistakes.json").exists()
    assert sim.teacher_engine.calls == 0


def test_fatal_and_per_example_failures_are_told_apart():
    import litellm

    auth = litellm.AuthenticationError("bad key", llm_provider="openai", model="gpt-4o")
    assert is_fatal(auth) and is_fatal(ConnectionRefusedError()) and not is_fatal(TimeoutError())
    wrapped = RuntimeError("call failed")
    wrapped.__cause__ = litellm.NotFoundError("no such model", llm_provider="openai", model="x")
    assert is_fatal(wrapped)
    assert failure_kind(TimeoutError()) == "timeout" and failure_kind(ValueError()) == "error"


class SlowTarget(SimulatedTarget):
    def complete(self, request):
        time.sleep(0.01)
        return super().complete(request)


def test_four_threads_never_exceed_a_target_call_cap(sim):
    engine = SlowTarget()
    sim.target, sim.target_engine = dspy.LM("simulated/target", engine=engine, cache=False), engine
    for cap in (7, 25, 60):
        engine.calls = 0
        cd = sim.optimizer(num_threads=4, max_target_calls=cap, run_dir=sim.tmp_path / f"cap{cap}")
        cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
        assert engine.calls == cap == cd.result.usage["target"].calls  # exact: never over, never short
        assert cd.result.stopped_early
    assert threading.active_count() < 8  # no worker thread of a compile outlives it


def test_two_lm_pipeline_keeps_its_second_lm(sim):
    class TwoLMs(dspy.Module):
        def __init__(self, other):
            super().__init__()
            self.plan = dspy.Predict("question -> plan")
            self.solve = dspy.Predict("question, plan -> answer: float")
            self.plan.set_lm(other)  # this step deliberately runs on another LM

        def forward(self, question):
            return self.solve(question=question, plan=self.plan(question=question).plan)

    other = dspy.LM("simulated/other", engine=SimulatedTarget(), cache=False)
    program = TwoLMs(other)
    compiled = with_rules(program, [Rule("r1", "Be careful.", "solve")], lm=sim.target)
    assert compiled.plan.lm.model == "simulated/other" and compiled.solve.lm is sim.target
    cd = sim.optimizer()
    compiled = cd.compile(program, trainset=sim.trainset, valset=sim.valset)
    assert compiled.plan.lm.model == "simulated/other" and compiled.solve.lm is sim.target
    assert program.plan.lm is other and program.solve.lm is None  # the user's program is untouched


def test_regenerated_rules_never_inherit_old_scores(sim):
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    rules = json.loads((run / "rules.json").read_text())
    rules = [rules[-1]] + rules[:-1]  # regenerated: the same texts in another order, plus a new one
    rules.append({**rules[0], "text": "When in doubt, answer 0.", "id": "R99", "verification": None})
    (run / "rules.json").write_text(json.dumps(rules))
    again = sim.optimizer()
    again.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    by_text = {r.text: r for r in again.result.rules}
    ids = {r.id for r in again.result.rules}
    assert len(ids) == len(again.result.rules)
    for trial in again.result.trials:  # every trial's rules are the rules of this rule set, by content
        assert set(trial.rule_ids) <= ids
    assert not by_text["When in doubt, answer 0."].selected


def _calls_of_a_compile(sim, run_dir, adapter=None):
    calls = (sim.target_engine.calls, sim.teacher_engine.calls)
    with dspy.context(adapter=adapter):
        sim.optimizer(run_dir=run_dir).compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    return sim.target_engine.calls - calls[0], sim.teacher_engine.calls - calls[1]


def test_an_adapter_change_redoes_collect_and_select(sim):
    run = sim.tmp_path / "run"
    first = _calls_of_a_compile(sim, run)
    assert _calls_of_a_compile(sim, run) == (0, 0)  # unchanged: everything reused
    json_run = _calls_of_a_compile(sim, run, adapter=dspy.JSONAdapter())
    fresh = _calls_of_a_compile(sim, sim.tmp_path / "fresh", adapter=dspy.JSONAdapter())
    assert json_run == fresh and json_run[0] > len(sim.trainset)  # nothing of the chat-adapter run replayed
    assert first[0] > 0


def test_an_lm_setting_change_redoes_the_target_work_but_keeps_the_teacher_settings_apart(sim):
    run = sim.tmp_path / "run"
    _calls_of_a_compile(sim, run)
    sim.target = dspy.LM("simulated/target", engine=sim.target_engine, cache=False, temperature=0.7)
    target_calls, teacher_calls = _calls_of_a_compile(sim, run)
    assert target_calls >= len(sim.trainset) and teacher_calls > 0  # collect (and all after it) redone


def test_a_metric_change_never_replays_scores(sim):
    run = sim.tmp_path / "run"
    _calls_of_a_compile(sim, run)

    def strict(example, prediction, trace=None):
        return sim.metric(example, prediction, trace) and "." not in str(prediction.answer)

    calls = sim.target_engine.calls
    sim.optimizer(run_dir=run, metric=strict).compile(dspy.ChainOfThought(COT), trainset=sim.trainset,
                                                      valset=sim.valset)
    assert sim.target_engine.calls - calls >= len(sim.trainset)


def test_threads_default_to_dspy_for_remote_lms_and_one_for_embedded_ones(sim):
    from cd_dspy.optimizer import default_threads

    remote = dspy.LM("openai/gpt-4o-mini", api_key="sk-test")
    assert default_threads(sim.target, remote) == 1  # an in-process engine: one call at a time
    with dspy.context(num_threads=6):
        assert default_threads(remote, remote) == 6


def test_collect_scores_failed_examples_zero_and_stores_them_for_a_retry(sim):
    flaky = FaultyEngine(SimulatedTarget(), rate=0.3, seed=2, kinds=("exception",), backoff=0.0)
    sim.target = dspy.LM("simulated/target", engine=flaky, cache=False)
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    stored = {i for line in (run / "collect.jsonl").read_text().splitlines() for i in json.loads(line)["indices"]}
    failed = set(range(len(sim.trainset))) - stored
    assert failed  # some examples failed: not stored as finished work...
    assert cd.result.usage["target"].failures["failed_example"] >= len(failed)
    # ...and scored 0 in the train score, as selection scores failures (not left out of it)
    scored = [json.loads(line) for line in (run / "collect.jsonl").read_text().splitlines()]
    assert cd.result.train_score == pytest.approx(100 * sum(c["score_sum"] for c in scored) / len(sim.trainset))
    assert not (run / "mistakes.json").exists()  # collect is not finished while examples failed
    flaky.rate = 0.0  # the LM recovers: the rerun collects just the failed examples
    sim.optimizer().compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    assert (run / "mistakes.json").exists()
    chunks = [json.loads(line) for line in (run / "collect.jsonl").read_text().splitlines()]
    added = {i for chunk in chunks[len(scored):] for i in chunk["indices"]}
    assert added == failed


def test_resume_false_also_starts_an_external_study_afresh(sim, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first = sim.optimizer(storage=storage)
    first.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    trials = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    again = sim.optimizer(storage=storage, resume=False)
    again.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    after = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert set(after) == set(names) and after == trials  # deleted and redone, not appended to


def test_failed_explanations_are_retried_on_the_next_run(sim):
    flaky = FaultyEngine(SimulatedTeacher(), rate=0.5, seed=4, kinds=("malformed",), backoff=0.0)
    sim.teacher = dspy.LM("simulated/teacher", engine=flaky, cache=False)
    cd = sim.optimizer(teacher_retries=0)
    cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    log = sim.tmp_path / "run" / "explanations.jsonl"
    first = [json.loads(line)["mistake_id"] for line in log.read_text().splitlines()]
    assert 0 < len(first) < cd.result.n_mistakes_used  # some explanations failed and were not stored
    flaky.rate = 0.0
    again = sim.optimizer(teacher_retries=0)
    again.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    second = [json.loads(line)["mistake_id"] for line in log.read_text().splitlines()]
    assert second[: len(first)] == first and len(second) == again.result.n_mistakes_used  # only the missing ones



def test_a_new_valset_of_the_same_size_never_inherits_scores(sim):
    from cd_dspy.testing.simulated import simulated_splits

    program = dspy.ChainOfThought(COT)
    sim.optimizer().compile(program, trainset=sim.trainset, valset=sim.valset)
    other = simulated_splits(len(sim.trainset), len(sim.valset), 40, seed=1)[2][:len(sim.valset)]
    calls = sim.target_engine.calls
    again = sim.optimizer()
    again.compile(program, trainset=sim.trainset, valset=other)
    fresh = sim.optimizer(run_dir=sim.tmp_path / "fresh")
    before_fresh = sim.target_engine.calls
    fresh.compile(program, trainset=sim.trainset, valset=other)
    # the same scores as a run that never saw the old valset (collect and verification are reused)
    assert again.result.baseline_score == fresh.result.baseline_score
    assert again.result.search_baseline_score == fresh.result.search_baseline_score
    assert sim.target_engine.calls - calls > 0 and sim.target_engine.calls - before_fresh > 0
