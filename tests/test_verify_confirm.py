"""Delexicalisation, causal verification of rules, the confirmation split and the small-valset warning."""

from __future__ import annotations

import dspy
import pytest

from cd_dspy.core.stats import min_detectable_gain, min_wins_for_significance, paired_difference, sign_test
from cd_dspy.phases.confirm import small_sample_warning
from cd_dspy.phases.induce import delexicalise, is_instance_specific
from cd_dspy.testing.simulated import HARMFUL_RULE, HELPFUL_RULES, NEUTRAL_RULE, ScriptedEngine, SimulatedTeacher

STICKERS = "Mia has 125 stickers. She packs them into bags of 10. How many full bags does she fill?"
REMAINDER = "What is the remainder when 86 is divided by 7?"
MOVIE = "A movie lasts 3 hours and 40 minutes. How many minutes is that?"
HUMANEVAL = ('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
             '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
             '    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    """\n')
CLASS = "class BankAccount:\n    def deposit(self, amount): ...\n"

# (rule, its source question, instance-specific?)
SPECIFICITY_TABLE = [
    ("Pack the stickers into bags of 10.", STICKERS, True),  # a copied phrase with a number
    ("Calculate the remainder when 86 is divided by 7.", REMAINDER, True),  # copied numbers
    ("Ava should count again.", "Then Ava packs them.", True),  # a copied name
    ("Call has_close_elements on each pair.", HUMANEVAL, True),  # a copied identifier
    ("The method `deposit` must add to the balance.", CLASS, True),
    ("BankAccount needs a balance attribute.", "Write " + CLASS, True),
    ("When a question asks for a remainder, use the modulo operation.", REMAINDER, False),
    ("When items are packed into bags of a fixed size, divide and round down.", STICKERS, False),
    ("Import List from typing when the signature uses it.", HUMANEVAL, False),  # List, typing are Python's
    ("When the signature uses Optional, import it from typing.", HUMANEVAL, False),
    ("Use `sorted` and compare neighbouring numbers.", HUMANEVAL, False),
    ("Multiply hours by 60 to get minutes.", MOVIE, False),  # 60 is a common constant
    ("Write a helper `is_prime` before using it.", HUMANEVAL, False),  # not in the source
]


@pytest.mark.parametrize("rule, source, specific", SPECIFICITY_TABLE)
def test_specificity_table(rule, source, specific):
    assert is_instance_specific(rule, [source]) is specific


def test_delexicalisation_replaces_what_was_copied():
    out = delexicalise("Calculate the remainder when 86 is divided by 7.", [REMAINDER])
    assert out.text == "Calculate the remainder when a number is divided by a number."
    assert set(out.replaced) == {"86", "7"} and out.copied_phrase is None
    assert delexicalise("Ava should count again.", ["Then Ava packs them."]).text == "someone should count again."
    assert "<identifier>" in delexicalise("Call has_close_elements first.", [HUMANEVAL]).text
    phrase = delexicalise("Pack the stickers into bags of 10.", [STICKERS])
    assert phrase.copied_phrase == "bags of 10" and phrase.replaced == ()
    assert not delexicalise("When a question asks for a remainder, use modulo.", [REMAINDER]).specific
    # an instance half abstracted: placeholders beside a number the teacher computed for that question
    leftover = delexicalise("For a number and a number, the answer is 63.", [REMAINDER])
    assert leftover.leftover == ("63",) and leftover.specific


# --- verification ---------------------------------------------------------------------------------

def test_verification_records_fixes_and_breaks_and_keeps_only_rules_that_help(sim):
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    rules = {r.text: r for r in cd.result.rules}
    for text in HELPFUL_RULES.values():
        check = rules[text].verification
        assert check["kept"] and check["fixed"] and len(check["broken"]) < len(check["fixed"])
        assert set(check["fixed"]) <= set(check["checked_mistakes"])
    harmful = rules[HARMFUL_RULE].verification  # rounds every answer down: fixes nothing, breaks non-integers
    assert not harmful["kept"] and not harmful["fixed"]
    assert not rules[NEUTRAL_RULE].verification["kept"]  # changes nothing: fixes no mistake
    assert not rules[HARMFUL_RULE].selected and not rules[NEUTRAL_RULE].selected
    # verification is part of the provenance on disk and in the report
    saved = (sim.tmp_path / "run" / "rules.json").read_text()
    assert '"verification"' in saved and '"fixed"' in saved
    from cd_dspy.core.report import render_report

    report = render_report(sim.tmp_path / "run")
    assert "fixed" in report and "broke" in report


def test_verification_uses_the_same_seeded_correct_sample_for_every_rule(sim):
    cd = sim.optimizer(verify_correct=3)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    samples = {tuple(r.verification["checked_correct"]) for r in cd.result.rules}
    assert len(samples) == 1 and len(next(iter(samples))) == 3


class UselessTeacher(ScriptedEngine):
    """Proposes only rules that fix nothing (the neutral one) or break answers (the harmful one)."""

    def respond(self, instructions, inputs, outputs):
        if "question" in inputs and "answer" in outputs:  # it solves the task (a teacher does)
            return SimulatedTeacher().respond(instructions, inputs, outputs)
        return {"explanation": "Careless.", "step": "predict", "rules": [NEUTRAL_RULE, HARMFUL_RULE]}


def test_no_rule_survives_verification_returns_program_unchanged(sim):
    program = dspy.ChainOfThought("question -> answer: float")
    sim.teacher = dspy.LM("simulated/useless", engine=UselessTeacher(), cache=False)
    cd = sim.optimizer()
    compiled = cd.compile(program, trainset=sim.trainset, valset=sim.valset)
    assert "No candidate rule fixed the mistakes it came from" in cd.result.message
    assert compiled.predict.signature.instructions == program.predict.signature.instructions
    assert [r.verification["kept"] for r in cd.result.rules] == [False, False]
    assert sim.target_engine.calls == len(sim.trainset) + sum(
        len(r.verification["checked_mistakes"]) + len(r.verification["checked_correct"]) for r in cd.result.rules)


# --- confirmation ---------------------------------------------------------------------------------

def test_confirmation_split_is_disjoint_and_decides(sim):
    cd = sim.optimizer()
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    result = cd.result
    assert result.n_search == result.n_confirm == len(sim.valset) // 2
    primary = result.candidates[0]  # the fixed sequence starts with the subset fixed before any score
    assert primary["step"] == "primary" and primary["accepted"] and result.improved
    fresh = result.n_confirm + result.n_confirm_train  # the confirmation part and the fresh training examples
    chosen = next(c for c in result.candidates if c["accepted"] and c["rule_ids"] == result.selected_rule_ids)
    assert result.comparison["n"] == (result.n_search + fresh if chosen["step"] == "primary" else fresh)
    assert result.best_score == result.comparison["after"] == 100.0
    assert result.baseline_score == result.comparison["before"]
    assert "examples" in result.message and "selected" in result.message


def test_small_valset_warns_with_the_smallest_detectable_gain(sim, caplog):
    cd = sim.optimizer(confirm_on_train=False)  # the confirmation data: the valset alone
    with caplog.at_level("WARNING", logger="cd_dspy"):
        cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset,
                   valset=sim.valset[:8])
    result = cd.result
    assert result.n_confirm == 4 and result.min_detectable_gain > 100
    assert any("With 4 confirmation examples no gain can be told from noise" in w for w in result.warnings)
    assert "confirmation examples" in caplog.text
    # the search's picks would be tested on the 4 alone; the primary subset, fixed before any score, is tested on
    # all 8 validation examples, where 6 fixed and none broken is significant
    assert result.improved and result.comparison["n"] == 8 and result.candidates[0]["step"] == "primary"
    assert result.candidates[0]["rule_ids"] == result.selected_rule_ids


def test_warning_figures():
    assert min_wins_for_significance(0.05, 1) == 5  # 0.5**5 = 0.031
    assert min_wins_for_significance(0.05, 3) == 6  # 0.5**6 = 0.016 < 0.0167
    assert min_detectable_gain(60, 0.05, 3) == pytest.approx(10.0)
    gain, warning = small_sample_warning(20, 0.05, 3, 0.5)
    assert gain == pytest.approx(30.0) and "only gains of at least 30 points" in warning
    assert "about 60 confirmation examples (a valset of about 120" in warning
    assert small_sample_warning(60, 0.05, 3, 0.5) == (pytest.approx(10.0), None)


def test_paired_statistics_on_known_inputs():
    before, after = [0, 0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]
    assert sign_test(after, before) == pytest.approx(8 / 128)  # 6 wins 1 loss: P(X >= 6 | n=7) = (7 + 1) / 128
    assert sign_test(after, before, "two-sided") == pytest.approx(16 / 128)
    comparison = paired_difference(after, before)
    assert comparison.difference == pytest.approx(62.5) and comparison.wins == 6 and comparison.losses == 1
    assert comparison.low < 62.5 < comparison.high
    assert sign_test([1, 1], [1, 1]) == 1.0


# -- mistake sampling -------------------------------------------------------------------------------
def _mistake(index: int, question: str, parse_failed: bool = False):
    from cd_dspy.core.result import Mistake

    return Mistake(id=f"m{index}", example_index=index, inputs={"question": question}, gold={"answer": 1},
                   outputs={}, score=0.0, feedback=None, steps=[], parse_failed=parse_failed)


def test_sampled_mistakes_cover_each_kind_of_question_before_repeating_one():
    from cd_dspy.phases.collect import sample_mistakes

    templates = ["How many apples does {n} have after buying {m}?", "Round {n}.{m} to the nearest whole number.",
                 "What time is it {n} minutes after {m}:00?"]
    mistakes = [_mistake(i, templates[i % 3 if i < 9 else 0].format(n=i, m=i + 3)) for i in range(15)]
    mistakes.append(_mistake(15, templates[0].format(n=1, m=2), parse_failed=True))
    for seed in range(5):
        chosen = sample_mistakes(mistakes, 4, seed)
        assert len(chosen) == 4
        assert {c.inputs["question"].split()[0] for c in chosen if not c.parse_failed} == {"How", "Round", "What"}
        assert any(c.parse_failed for c in chosen), seed  # a format failure is a kind of its own
    assert sample_mistakes(mistakes, 4, 0) == sample_mistakes(mistakes, 4, 0)
    assert len(sample_mistakes(mistakes, 100, 0)) == 16
