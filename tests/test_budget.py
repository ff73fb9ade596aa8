"""Budgets: caps on target calls, teacher calls, tokens and dollars; dry-run estimates."""

from __future__ import annotations

import json

import dspy
import dspy.clients.costs
import pytest

from cd_dspy.phases.integrate import RULES_HEADER

COT = "question -> answer: float"
N_TRAIN, N_VAL = 12, 40


def compile_sim(sim, **settings):
    settings.setdefault("num_trials", 8)
    cd = sim.optimizer(**settings)
    program = dspy.ChainOfThought(COT)
    compiled = cd.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    return cd, program, compiled


def test_target_cap_in_select_stops_cleanly_and_resumes_without_paying_twice(sim):
    reference = sim.optimizer(num_trials=8, run_dir=sim.tmp_path / "reference")
    reference.compile(dspy.ChainOfThought(COT), trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    verification = len((sim.tmp_path / "reference" / "verification.jsonl").read_text().splitlines())
    n_search = reference.result.n_search
    sim.target_engine.calls = sim.teacher_engine.calls = 0
    cap = N_TRAIN + verification + 3 * n_search + 4  # collect, verify, three full trials, then inside the fourth
    cd, program, compiled = compile_sim(sim, max_target_calls=cap)
    result = cd.result
    assert sim.target_engine.calls == result.usage["target"].calls == cap  # never one call over the cap
    assert f"target call budget reached ({cap} calls)" in result.stopped_early
    assert "Stopped early" in result.message and "returned unchanged" in result.message
    assert len([t for t in result.trials if t.state == "complete"]) == 3
    # a search cut short is never confirmed: nothing is integrated
    assert not result.improved and compiled.predict.signature.instructions == program.predict.signature.instructions

    # a rerun without the cap resumes the study and pays for no scored (prompt, example) again
    spent = sim.target_engine.calls
    again = sim.optimizer(num_trials=8)
    compiled = again.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    assert again.result.stopped_early is None and again.result.improved
    assert RULES_HEADER in compiled.predict.signature.instructions
    run = sim.tmp_path / "run"
    scored = [json.loads(line) for name in ("verification.jsonl", "evaluations.jsonl")
              for line in (run / name).read_text().splitlines()]
    per_log = [{(r["key"], r["index"]) for r in map(json.loads, (run / name).read_text().splitlines())}
               for name in ("verification.jsonl", "evaluations.jsonl")]
    assert sum(map(len, per_log)) == len(scored)  # each (prompt, example) scored once per log
    assert sim.target_engine.calls == N_TRAIN + len(scored) > spent  # every target call is in a log, once


def test_target_cap_in_collect_returns_program_unchanged(sim):
    cd, program, compiled = compile_sim(sim, max_target_calls=5)
    assert sim.target_engine.calls == 5 and sim.teacher_engine.calls == 0
    assert "target call budget reached (5 calls)" in cd.result.stopped_early
    assert "Stopped early" in cd.result.message and "returned unchanged" in cd.result.message
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    # failures of refused calls were not recorded as the target's mistakes
    assert not (sim.tmp_path / "run" / "mistakes.json").exists()


def test_teacher_cap_stops_in_induce(sim):
    cd, program, compiled = compile_sim(sim, max_teacher_calls=3)
    assert sim.teacher_engine.calls == cd.result.usage["teacher"].calls == 3
    assert "teacher call budget reached (3 calls)" in cd.result.stopped_early
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    assert sim.target_engine.calls == N_TRAIN  # no selection was paid for


def test_token_cap(sim):
    cd, _, _ = compile_sim(sim, max_tokens=20_000)
    usage = cd.result.usage
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage.values())
    assert "token budget reached (20000 tokens)" in cd.result.stopped_early
    per_call = max(u.prompt_tokens + u.completion_tokens for u in usage.values()) / 1  # at most one call over
    assert 20_000 <= tokens <= 20_000 + per_call
    assert tokens < 20_000 + 2_000  # one simulated call is a few hundred tokens


@pytest.fixture
def priced(monkeypatch):
    """Make DSPy price every call at $0.001 (DSPy prices custom engines at None: no provider)."""
    original = dspy.clients.costs.estimate_cost

    def estimate_cost(response, **kwargs):
        original(response, **kwargs)
        return 0.001, {"kind": "test", "reason": "flat test price"}

    monkeypatch.setattr(dspy.clients.costs, "estimate_cost", estimate_cost)


def test_cost_is_counted_from_dspy_history(sim, priced):
    cd, _, _ = compile_sim(sim)
    usage = cd.result.usage
    assert usage["target"].cost_usd == pytest.approx(0.001 * sim.target_engine.calls)
    assert usage["teacher"].cost_usd == pytest.approx(0.001 * sim.teacher_engine.calls)
    assert sim.target.history[-1]["cost"] == 0.001


def test_cost_cap(sim, priced):
    cd, _, _ = compile_sim(sim, max_cost_usd=0.05)
    usage = cd.result.usage
    cost = sum(u.cost_usd for u in usage.values())
    assert "cost budget reached ($0.05)" in cd.result.stopped_early
    assert cost == pytest.approx(0.05)  # each call costs $0.001: the 51st is refused
    assert sim.target_engine.calls + sim.teacher_engine.calls in (50, 51)  # float sums of 0.001


def test_dry_run_bounds_the_actual_spend(sim):
    cd = sim.optimizer(num_trials=8)
    program = dspy.ChainOfThought(COT)
    estimate = cd.dry_run(program, sim.trainset[:N_TRAIN], sim.valset[:N_VAL])
    assert sim.target_engine.calls == sim.teacher_engine.calls == 0  # nothing spent
    n_rules, n_search = cd.max_rules, N_VAL // 2
    n_confirm = N_VAL // 2 + N_TRAIN - min(cd.max_mistakes, N_TRAIN)  # and the training examples the teacher never saw
    verify = n_rules * (cd.verify_max_sources + cd.verify_correct)
    confirm = (2 + cd.confirm_top_k + n_rules) * n_confirm  # baseline, primary subset, shortlist, leave-one-out
    assert estimate["target_calls"] == N_TRAIN + verify + (8 + 4) * n_search + confirm
    assert estimate["predictors"] == 1
    # each mistake: up to two solving attempts (primed, unprimed) and one explanation; one consolidation
    assert estimate["teacher_calls"] == 3 * min(cd.max_mistakes, N_TRAIN) + 1
    cd.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    target, teacher = sim.target_engine.calls, sim.teacher_engine.calls
    print(f"\n[dry-run] estimate target {estimate['target_calls']} teacher {estimate['teacher_calls']} "
          f"tokens {estimate['tokens']}; actual target {target} teacher {teacher} tokens "
          f"{sum(u.prompt_tokens + u.completion_tokens for u in cd.result.usage.values())}")
    assert estimate["target_calls"] / 2 <= target <= estimate["target_calls"]  # an upper bound within 2x
    assert estimate["teacher_calls"] / 2 <= teacher <= estimate["teacher_calls"]
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in cd.result.usage.values())
    assert tokens / 5 <= estimate["tokens"] <= tokens * 5  # rough: within 5x (the simulated LMs count words)
    # the estimate says when a cap will bite
    capped = sim.optimizer(num_trials=8, max_target_calls=50)
    assert capped.dry_run(program, sim.trainset[:N_TRAIN], sim.valset[:N_VAL])["exceeds_budget"] == [
        "max_target_calls"]
