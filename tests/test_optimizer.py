"""End-to-end tests of ConceptDistillation on the simulated target and teacher."""

from __future__ import annotations

import json
import logging

import dspy
import pytest

from cd_dspy import ConceptDistillation, ConceptDistillationResult
from cd_dspy.phases.integrate import RULES_HEADER
from cd_dspy.phases.search import RuleSelector
from cd_dspy.testing.simulated import HARMFUL_RULE, HELPFUL_RULES, NEUTRAL_RULE, answer_match


def rules_by_text(result: ConceptDistillationResult) -> dict[str, object]:
    return {r.text: r for r in result.rules}


def test_helpful_rules_kept_harmful_dropped_score_rises(sim):
    program = dspy.ChainOfThought("question -> answer: float")
    cd = sim.optimizer()
    compiled = cd.compile(program, trainset=sim.trainset, valset=sim.valset)
    result = cd.result
    rules = rules_by_text(result)
    assert all(rules[text].selected for text in HELPFUL_RULES.values())
    assert not rules[HARMFUL_RULE].selected and not rules[HARMFUL_RULE].verified
    for text in HELPFUL_RULES.values():  # leave-one-out effects on the confirmation examples, with intervals
        low, high = rules[text].effect_interval
        assert rules[text].effect > 0 and low <= rules[text].effect <= high
    assert result.best_score > result.baseline_score
    assert result.improved and result.best_score == 100.0
    instructions = compiled.predict.signature.instructions
    assert RULES_HEADER in instructions and HARMFUL_RULE not in instructions
    # instance-specific rules ("For 40 and 25, the answer is ...") never reach the study
    assert not any(text.startswith("For ") for text in rules)
    score = dspy.Evaluate(devset=sim.valset, metric=answer_match)(compiled).score
    assert score == 100.0


def test_user_program_is_not_modified(sim):
    program = dspy.ChainOfThought("question -> answer: float")
    before = program.predict.signature.instructions
    compiled = sim.optimizer().compile(program, trainset=sim.trainset, valset=sim.valset)
    assert program.predict.signature.instructions == before
    assert program.predict.lm is None
    assert compiled.predict.signature.instructions != before
    assert compiled.predict.lm is sim.target


def test_save_and_load_keep_rules(sim, tmp_path):
    program = dspy.ChainOfThought("question -> answer: float")
    compiled = sim.optimizer().compile(program, trainset=sim.trainset, valset=sim.valset)
    path = tmp_path / "compiled.json"
    compiled.save(str(path))
    loaded = dspy.ChainOfThought("question -> answer: float")
    loaded.load(str(path), allow_unsafe_lm_state=True)
    assert loaded.predict.signature.instructions == compiled.predict.signature.instructions
    assert HELPFUL_RULES["vans"] in loaded.predict.signature.instructions
    # the run directory holds the compiled program too
    assert (sim.tmp_path / "run" / "program.json").exists()


class PlanThenSolve(dspy.Module):
    def __init__(self):
        super().__init__()
        self.plan = dspy.Predict("question -> plan")
        self.solve = dspy.Predict("question, plan -> answer: float")

    def forward(self, question):
        plan = self.plan(question=question).plan
        return self.solve(question=question, plan=plan)


def test_two_predictor_program_gets_rules_on_the_right_predictor(sim):
    cd = sim.optimizer()
    compiled = cd.compile(PlanThenSolve(), trainset=sim.trainset, valset=sim.valset)
    rules = rules_by_text(cd.result)
    assert rules[HELPFUL_RULES["units"]].predictor == "plan"
    assert rules[HELPFUL_RULES["percent"]].predictor == "solve"
    assert HELPFUL_RULES["units"] in compiled.plan.signature.instructions
    assert HELPFUL_RULES["units"] not in compiled.solve.signature.instructions
    assert HELPFUL_RULES["percent"] in compiled.solve.signature.instructions
    assert cd.result.best_score == 100.0


def test_no_mistakes_returns_unchanged_program_with_message(sim, caplog):
    add_only = [e for e in sim.trainset if e.kind == "add"]
    program = dspy.ChainOfThought("question -> answer: float")
    cd = sim.optimizer()
    with caplog.at_level(logging.INFO, logger="cd_dspy"):
        compiled = cd.compile(program, trainset=add_only, valset=sim.valset)
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    assert "no mistakes" in cd.result.message
    assert "no mistakes" in caplog.text
    assert sim.teacher_engine.calls == 0


def test_cache_never_pays_twice_for_a_prompt_and_example(sim):
    cd = sim.optimizer(num_trials=12)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    distinct = {tuple(t.rule_ids) for t in cd.result.trials if t.state == "complete"}
    verified = [r for r in cd.result.rules if r.verified]
    assert len(cd.result.trials) >= len(distinct) == min(12, 2 ** len(verified))  # or every subset
    assert sim.target_engine.calls == len(sim.trainset) + scored_pairs(sim.tmp_path / "run")
    assert cd.result.usage["target"].calls == sim.target_engine.calls
    assert cd.result.usage["teacher"].calls == sim.teacher_engine.calls > 0
    # a second compile over the same run_dir is free: every phase and score is reused
    calls_before = (sim.target_engine.calls, sim.teacher_engine.calls)
    again = sim.optimizer(num_trials=12)
    again.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    assert (sim.target_engine.calls, sim.teacher_engine.calls) == calls_before
    assert again.result.selected_rule_ids == cd.result.selected_rule_ids


def scored_pairs(run) -> int:
    """The distinct (prompt, example) pairs verification and selection scored, checking none twice."""
    pairs = [(name, r["key"], r["index"]) for name in ("verification.jsonl", "evaluations.jsonl")
             for r in map(json.loads, (run / name).read_text().splitlines())]
    assert len(set(pairs)) == len(pairs)
    return len(pairs)


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def test_resume_after_interrupted_compile_repeats_no_finished_trial(sim, monkeypatch):
    program = dspy.ChainOfThought("question -> answer: float")
    reference = ConceptDistillation(metric=answer_match, teacher_lm=sim.teacher, target_lm=sim.target, seed=0,
                                    run_dir=sim.tmp_path / "reference", progress=False, num_trials=16,
                                    carrier="rules")  # as sim.optimizer
    reference.compile(program, trainset=sim.trainset, valset=sim.valset)
    sim.target_engine.calls = sim.teacher_engine.calls = 0

    original = RuleSelector._notify
    seen = []

    def crash_on_sixth(self, number, *args):
        original(self, number, *args)
        seen.append(number)
        if len(seen) == 6:
            raise Crash()

    monkeypatch.setattr(RuleSelector, "_notify", crash_on_sixth)
    with pytest.raises(Crash):
        sim.optimizer(num_trials=16).compile(program, trainset=sim.trainset, valset=sim.valset)
    monkeypatch.setattr(RuleSelector, "_notify", original)
    first_target, first_teacher = sim.target_engine.calls, sim.teacher_engine.calls
    assert first_teacher > 0 and (sim.tmp_path / "run" / "rules.json").exists()

    resumed = sim.optimizer(num_trials=16)
    resumed.compile(program, trainset=sim.trainset, valset=sim.valset)
    assert sim.teacher_engine.calls == first_teacher  # induce was not redone
    assert any(t.state == "fail" for t in resumed.result.trials)  # the trial the crash interrupted
    # every (prompt, example) was paid once across both runs: train once + each scored pair once
    assert sim.target_engine.calls == len(sim.trainset) + scored_pairs(sim.tmp_path / "run")
    assert sim.target_engine.calls > first_target
    assert resumed.result.selected_rule_ids == reference.result.selected_rule_ids
    assert resumed.result.best_score == reference.result.best_score


def test_result_round_trips_and_artifacts_are_written(sim):
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    for name in ("mistakes.json", "explanations.jsonl", "rules.json", "study.db", "result.json", "program.json"):
        assert (run / name).exists(), name
    saved = json.loads((run / "result.json").read_text())
    restored = ConceptDistillationResult.from_dict(saved)
    assert restored.to_dict() == cd.result.to_dict()
    assert restored.selected_rule_ids == [r.id for r in restored.rules if r.selected]
    assert set(restored.phase_seconds) >= {"collect", "induce", "select", "total"}
    mistake_ids = {m["id"] for m in json.loads((run / "mistakes.json").read_text())["mistakes"]}
    assert all(set(r.sources) <= mistake_ids and r.sources for r in restored.rules)


def test_no_gain_returns_unchanged_program(sim):
    """A teacher whose only rule is neutral cannot beat the baseline: verification stops it, and without
    verification the confirmation does; nothing is integrated."""
    solve = sim.teacher_engine.respond
    sim.teacher_engine.respond = lambda instructions, inputs, outputs: (
        solve(instructions, inputs, outputs) if "question" in inputs  # it still solves the task
        else {"rules": [NEUTRAL_RULE]} if "candidate_rules" in inputs
        else {"explanation": "?", "step": "predict", "rules": [NEUTRAL_RULE]})
    program = dspy.ChainOfThought("question -> answer: float")
    cd = sim.optimizer()
    compiled = cd.compile(program, trainset=sim.trainset, valset=sim.valset)
    assert not cd.result.improved and cd.result.selected_rule_ids == []
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    assert "No candidate rule fixed the mistakes it came from" in cd.result.message
    unverified = sim.optimizer(verify=False, run_dir=sim.tmp_path / "unverified")
    compiled = unverified.compile(program, trainset=sim.trainset, valset=sim.valset)
    assert not unverified.result.improved
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    assert "No concept subset was confirmed" in unverified.result.message
    assert "Not distinguishable from the baseline" in unverified.result.message


def test_valset_is_split_from_trainset_when_missing(sim):
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset + sim.valset)
    half = (len(sim.trainset) + len(sim.valset)) // 2
    assert cd.result.n_train == half and cd.result.n_val == half
    assert cd.result.n_search + cd.result.n_confirm == half


def test_minibatch_pruning_still_finds_the_rules(sim):
    cd = sim.optimizer(minibatch_size=4, num_trials=20)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    assert cd.result.best_score == 100.0
    assert HARMFUL_RULE not in [r.text for r in cd.result.selected_rules]
