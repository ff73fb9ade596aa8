"""Budgets: caps on target calls, teacher calls, tokens and dollars; dry-run estimates."""

from __future__ import annotations

import json

import dspy
import dspy.clients.costs
import pytest

from cd_dspy.integrate import RULES_HEADER

COT = "question -> answer: float"
N_TRAIN, N_VAL = 12, 8


def compile_sim(sim, **settings):
    settings.setdefault("num_trials", 8)
    cd = sim.optimizer(**settings)
    program = dspy.ChainOfThought(COT)
    compiled = cd.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    return cd, program, compiled


def test_target_cap_in_select_returns_best_subset_so_far(sim):
    cap = N_TRAIN + 3 * N_VAL + 4  # collect, three full trials, then the cap bites inside the fourth
    cd, program, compiled = compile_sim(sim, max_target_calls=cap)
    result = cd.result
    assert sim.target_engine.calls == result.usage["target"].calls == cap  # never one call over the cap
    assert f"target call budget reached ({cap} calls)" in result.stopped_early
    assert "stopped early" in result.message
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 3
    best = max(complete, key=lambda t: (t.score, -len(t.rule_ids)))
    assert result.best_score == best.score > result.baseline_score
    assert result.improved and result.selected_rule_ids == best.rule_ids  # the best subset found before the cap
    instructions = compiled.predict.signature.instructions
    assert RULES_HEADER in instructions and all(r.text in instructions for r in result.selected_rules)

    # a rerun without the cap resumes the study and pays for no scored (prompt, example) again
    spent = sim.target_engine.calls
    again = sim.optimizer(num_trials=8)
    again.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    assert again.result.stopped_early is None
    scored = [json.loads(line) for line in (sim.tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert len({(r["key"], r["index"]) for r in scored}) == len(scored)  # each (prompt, example) scored once
    assert sim.target_engine.calls == N_TRAIN + len(scored) > spent  # every target call is in the log, once


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
    assert estimate["target_calls"] == N_TRAIN + (8 + 4) * N_VAL and estimate["predictors"] == 1
    assert estimate["teacher_calls"] == min(cd.max_mistakes, N_TRAIN) + 1
    cd.compile(program, trainset=sim.trainset[:N_TRAIN], valset=sim.valset[:N_VAL])
    target, teacher = sim.target_engine.calls, sim.teacher_engine.calls
    print(f"\n[dry-run] estimate target {estimate['target_calls']} teacher {estimate['teacher_calls']} "
          f"tokens {estimate['tokens']}; actual target {target} teacher {teacher} tokens "
          f"{sum(u.prompt_tokens + u.completion_tokens for u in cd.result.usage.values())}")
    assert estimate["target_calls"] / 2 <= target <= estimate["target_calls"]  # an upper bound within 2x
    assert estimate["teacher_calls"] / 2 <= teacher <= estimate["teacher_calls"]
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in cd.result.usage.values())
    assert tokens / 4 <= estimate["tokens"] <= tokens * 4  # rough: within 4x
    # the estimate says when a cap will bite
    capped = sim.optimizer(num_trials=8, max_target_calls=50)
    assert capped.dry_run(program, sim.trainset[:N_TRAIN], sim.valset[:N_VAL])["exceeds_budget"] == [
        "max_target_calls"]
