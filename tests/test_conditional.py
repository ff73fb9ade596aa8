"""Conditional rules: each rule speaks only to the inputs that meet its "When ..." condition."""

from __future__ import annotations

import dspy
import pytest
from noisy_world import HELPFUL_RULE, noisy_compile

from cd_dspy.core.result import Rule
from cd_dspy.phases.integrate import RULES_HEADER, RulePredict, applies, load_program, triggers, with_rules
from cd_dspy.testing.simulated import HELPFUL_RULES

CARS = "When asked for the number of cars needed, use ceiling division."
PERCENT = "A coat costs 60 dollars and is 25 percent off. What does the coat cost now?"


@pytest.mark.parametrize("rule, sources, expected", [
    (CARS, [], ["cars"]),  # generic words (asked, number, needed) are not triggers
    (CARS, ["40 people share cars of 6 seats. How many cars are needed?"], ["cars"]),
    (CARS, ["How many vans are needed?"], []),  # the condition's words are not in its own question: always on
    ("Always round the final answer down.", [], []),  # no condition: always on
    (HELPFUL_RULES["percent"], [PERCENT], ["off", "percen"]),  # "price" is a paraphrase its question lacks
])
def test_triggers(rule, sources, expected):
    assert triggers(rule, sources) == expected


def test_a_rule_applies_when_half_its_triggers_are_in_the_input():
    rule = {"text": HELPFUL_RULES["percent"], "triggers": ["off", "percen"]}
    assert applies(rule, PERCENT)
    assert applies(rule, "The shirt is 10 percent cheaper.")  # one of two
    assert not applies(rule, "A trip takes 2 hours and 30 minutes.")
    assert applies({"text": "x", "triggers": []}, "anything")


def test_rule_predict_shows_each_rule_only_where_it_applies(sim):
    percent = Rule("r1", HELPFUL_RULES["percent"], "predict", triggers=["off", "percen"])
    always = Rule("r2", HELPFUL_RULES["units"], "predict", triggers=[])
    program = dspy.ChainOfThought("question -> answer: float")
    compiled = with_rules(program, [percent, always], lm=sim.target, conditional=True)
    assert isinstance(compiled.predict, RulePredict) and not isinstance(program.predict, RulePredict)
    assert RULES_HEADER not in compiled.predict.signature.instructions  # rendered per input
    assert compiled.predict.active_rules({"question": PERCENT}) == [percent.text, always.text]
    assert compiled.predict.active_rules({"question": "A trip takes 2 hours and 30 minutes."}) == [always.text]
    assert compiled(question=PERCENT).answer == 45.0  # the percent rule reached the target
    assert compiled.predict.lm is sim.target


def test_conditional_rules_survive_save_and_load(sim, tmp_path):
    rules = [Rule("r1", HELPFUL_RULES["percent"], "predict", triggers=["off", "percen"])]
    compiled = with_rules(dspy.ChainOfThought("question -> answer: float"), rules, lm=sim.target, conditional=True)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    loaded = load_program(dspy.ChainOfThought("question -> answer: float"), path, allow_unsafe_lm_state=True)
    assert isinstance(loaded.predict, RulePredict)
    assert loaded.predict.conditional_rules == compiled.predict.conditional_rules
    loaded.set_lm(sim.target)
    assert loaded(question=PERCENT).answer == 45.0
    whole = tmp_path / "whole"
    bare = compiled.deepcopy()
    bare.set_lm(None)  # the simulated engine holds a lock, which cannot be pickled
    bare.save(str(whole), save_program=True)  # DSPy's whole-program save keeps the class too
    restored = dspy.load(str(whole), allow_pickle=True)
    assert isinstance(restored.predict, RulePredict)
    assert restored.predict.conditional_rules == compiled.predict.conditional_rules


def test_compile_with_conditional_rules(sim):
    cd = sim.optimizer(conditional_rules=True)
    compiled = cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    assert cd.result.improved and cd.result.best_score == 100.0
    assert isinstance(compiled.predict, RulePredict)
    by_text = {r.text: r for r in cd.result.rules}
    assert by_text[HELPFUL_RULES["percent"]].triggers == ["off", "percen"]


def test_conditional_rules_break_nothing_they_do_not_concern():
    """In the prompt-sensitive world every shown rule reshuffles answers; a conditional helpful rule is
    shown only to its own kind of question, so verification finds it breaks no correct example."""
    always, _ = noisy_compile(3, helpful=True)
    conditional, _ = noisy_compile(3, helpful=True, conditional_rules=True)
    broken = {name: next(r for r in result.rules if r.text == HELPFUL_RULE).verification["broken"]
              for name, result in (("always", always), ("conditional", conditional))}
    assert broken["conditional"] == [] and conditional.improved


class Steps(dspy.Module):
    def __init__(self):
        super().__init__()
        self.steps = [dspy.Predict("question -> answer: float"), dspy.Predict("question -> answer: float")]

    def forward(self, question):
        return self.steps[1](question=self.steps[0](question=question).answer)


def test_conditional_rules_reach_predictors_anywhere_in_the_program(sim):
    bare = dspy.Predict("question -> answer: float")  # the program is itself the predictor ("self")
    compiled = with_rules(bare, [Rule("r1", HELPFUL_RULES["percent"], "self", triggers=["percen"])],
                          lm=sim.target, conditional=True)
    assert isinstance(compiled, RulePredict) and compiled.lm is sim.target and not isinstance(bare, RulePredict)
    names = [name for name, _ in Steps().named_predictors()]
    compiled = with_rules(Steps(), [Rule("r2", HELPFUL_RULES["percent"], names[1], triggers=["percen"])],
                          lm=sim.target, conditional=True)
    assert isinstance(compiled.steps[1], RulePredict) and not isinstance(compiled.steps[0], RulePredict)
