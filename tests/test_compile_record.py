"""The constructor's grouped settings, and the compile record that travels with the returned program."""

from __future__ import annotations

import inspect
import json

import dspy
import pytest

from cd_dspy import (
    Budget,
    ConceptDistillation,
    ConceptDistillationResult,
    ConceptSettings,
    ConfirmationSettings,
    SearchSettings,
    VerificationSettings,
    grouped,
    load_program,
)
from cd_dspy.core.result import Rule
from cd_dspy.phases.integrate import PLAIN_LOAD_GUARD, RECORD_KEY, RulePredict, with_rules
from cd_dspy.testing.simulated import HELPFUL_RULES

PERCENT = "A coat costs 60 dollars and is 25 percent off. What does the coat cost now?"


def test_the_constructor_takes_at_most_16_arguments():
    assert len(inspect.signature(ConceptDistillation.__init__).parameters) - 1 <= 16


def test_groups_set_the_settings_the_phases_read(sim):
    cd = ConceptDistillation(sim.metric, teacher_lm=sim.teacher, target_lm=sim.target, auto="medium",
                             concepts=ConceptSettings(max_rules=3, priming="none", max_exemplars=2),
                             verification=VerificationSettings(enabled=False, correct=5),
                             search=SearchSettings(study_name="s"),
                             confirmation=ConfirmationSettings(fraction=0.4, top_k=2, on_train=False),
                             budget=Budget(max_target_calls=50))
    assert (cd.max_rules, cd.max_mistakes, cd.num_trials) == (3, 16, 24)  # one override, the rest from the preset
    assert (cd.priming, cd.max_exemplars, cd.verify, cd.verify_correct) == ("none", 2, False, 5)
    assert (cd.study_name, cd.confirm_fraction, cd.confirm_top_k, cd.confirm_on_train) == ("s", 0.4, 2, False)
    assert cd.budget.max_target_calls == 50 and cd.settings()["verify"] is False


def test_grouped_builds_the_groups_and_one_budget_from_flat_names(sim):
    kwargs = grouped(verify=False, confirm_fraction=0.3, max_mistakes=4, storage="sqlite:///x.db",
                     max_target_calls=10, num_trials=3)
    assert kwargs["verification"] == VerificationSettings(enabled=False)
    assert kwargs["confirmation"] == ConfirmationSettings(fraction=0.3)
    assert kwargs["concepts"] == ConceptSettings(max_mistakes=4)
    assert kwargs["search"] == SearchSettings(storage="sqlite:///x.db")
    assert kwargs["budget"] == Budget(max_target_calls=10) and kwargs["num_trials"] == 3
    cd = ConceptDistillation(**grouped(metric=sim.metric, teacher_lm=sim.teacher, **kwargs))
    assert (cd.verify, cd.confirm_fraction, cd.max_mistakes, cd.budget.max_target_calls) == (False, 0.3, 4, 10)


def test_grouped_changes_a_group_passed_with_flat_names_and_refuses_two_budgets():
    assert grouped(concepts=ConceptSettings(max_rules=3), priming="none")["concepts"] == ConceptSettings(
        max_rules=3, priming="none")
    with pytest.raises(TypeError, match="either as budget= or as max_teacher_calls"):
        grouped(budget=Budget(max_target_calls=3), max_teacher_calls=4)


@pytest.mark.parametrize("bad, message", [
    ({"verification": {"enabled": False}}, "verification= takes a cd_dspy.config.VerificationSettings"),
    ({"verification": False}, "verification= takes a cd_dspy.config.VerificationSettings"),
    ({"budget": {"max_target_calls": 3}}, "budget= takes a cd_dspy.Budget"),
    ({"verify": False}, "unexpected keyword argument 'verify'"),  # flat names go through grouped()
])
def test_a_wrong_setting_names_the_fix(sim, bad, message):
    with pytest.raises(TypeError, match=message):
        ConceptDistillation(sim.metric, teacher_lm=sim.teacher, **bad)


def test_the_returned_program_carries_its_compile_record_saved_with_it(sim, tmp_path):
    cd = sim.optimizer(num_trials=4)
    compiled = cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset,
                          valset=sim.valset)
    assert compiled.detailed_results is cd.result and compiled.detailed_results.rules
    saved = json.loads((tmp_path / "run" / "program.json").read_text())
    assert saved[RECORD_KEY]["message"] == cd.result.message
    loaded = load_program(dspy.ChainOfThought("question -> answer: float"), tmp_path / "run" / "program.json",
                          allow_unsafe_lm_state=True)
    assert isinstance(loaded.detailed_results, ConceptDistillationResult)
    assert loaded.detailed_results.to_dict() == ConceptDistillationResult.from_dict(saved[RECORD_KEY]).to_dict()
    plain = dspy.ChainOfThought("question -> answer: float")
    plain.load(str(tmp_path / "run" / "program.json"), allow_unsafe_lm_state=True)  # DSPy's own load skips it
    assert plain.predict.signature.instructions == compiled.predict.signature.instructions
    second = sim.optimizer(num_trials=4, run_dir=tmp_path / "other")
    second.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset[:4],
                   valset=sim.valset[:8])
    assert compiled.detailed_results is cd.result  # a later compile does not overwrite the first program's


def test_a_predict_with_conditional_rules_as_the_whole_program_loads(sim, tmp_path):
    rules = [Rule(id="p", text=HELPFUL_RULES["percent"], predictor="self")]
    compiled = with_rules(dspy.Predict("question -> answer: float"), rules, lm=sim.target, conditional=True)
    compiled.save(str(tmp_path / "p.json"))
    loaded = load_program(dspy.Predict("question -> answer: float"), tmp_path / "p.json", allow_unsafe_lm_state=True)
    assert isinstance(loaded, RulePredict) and loaded.conditional_rules == compiled.conditional_rules


def test_a_plain_load_of_conditional_rules_raises_and_load_program_restores_them(sim, tmp_path):
    rules = [Rule(id="p", text=HELPFUL_RULES["percent"], predictor="predict")]
    compiled = with_rules(dspy.ChainOfThought("question -> answer: float"), rules, lm=sim.target, conditional=True)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    with pytest.raises(ValueError, match="cd_dspy.load_program"):
        dspy.ChainOfThought("question -> answer: float").load(str(path), allow_unsafe_lm_state=True)
    loaded = load_program(dspy.ChainOfThought("question -> answer: float"), path, allow_unsafe_lm_state=True)
    assert isinstance(loaded.predict, RulePredict) and PLAIN_LOAD_GUARD not in loaded.predict.fields
    loaded.set_lm(sim.target)
    assert loaded(question=PERCENT).answer == 45.0  # the rule is back, and speaks to this question
