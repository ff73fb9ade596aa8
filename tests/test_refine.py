"""Refinement rounds (`VerificationSettings(rounds=...)`, `cd_dspy.phases.refine`): a rule that fails the screen
goes back to the teacher with what it did not fix and what it broke, and a revision that passes the screen goes
on to the search.

The world: the simulated teacher's first rules are near misses the target does not follow (a paraphrase of the
helpful rule), while shown what its rule did not fix it writes the helpful rule. Without rounds nothing helps;
with one round the revised rules are screened, selected and confirmed.
"""

from __future__ import annotations

import json

import dspy
import pytest

from cd_dspy.core.result import Rule
from cd_dspy.phases.refine import REFINED, REFINEMENTS_LOG, describe_examples, revise_rules
from cd_dspy.testing.simulated import HELPFUL_RULES, SimulatedTeacher, kind_of

NEAR_MISS = {"percent": "When a price is reduced, take the reduction into account.",
             "units": "When a time is given in hours and minutes, be careful with the minutes.",
             "vans": "When counting containers, think about the leftover people."}


class NearMissTeacher(SimulatedTeacher):
    """Explains every mistake with a near-miss rule; revises with the helpful one (SimulatedTeacher's revision)."""

    def respond(self, instructions, inputs, outputs):
        if "student_attempt" in inputs:
            kind = kind_of(inputs["student_attempt"].replace('\\"', '"'))
            steps = json.loads(inputs.get("steps", "[]") or "[]")
            return {"explanation": f"A {kind} problem.", "step": steps[-1] if steps else "",
                    "rules": [NEAR_MISS[kind]] if kind in NEAR_MISS else []}
        return super().respond(instructions, inputs, outputs)


@pytest.fixture
def near_miss(sim):
    sim.teacher_engine = NearMissTeacher()
    sim.teacher = dspy.LM("simulated/teacher", engine=sim.teacher_engine, cache=False)
    return sim


def _compile(world, **settings):
    cd = world.optimizer(num_trials=12, max_rules=6, **settings)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=world.trainset, valset=world.valset)
    return cd.result


def test_without_rounds_the_near_misses_fail_the_screen_and_nothing_is_selected(near_miss):
    result = _compile(near_miss)
    assert result.rules and all(not r.verified for r in result.rules)
    assert not result.selected_rule_ids


def test_one_round_turns_failed_rules_into_helpful_ones_that_are_selected(near_miss, tmp_path):
    result = _compile(near_miss, rounds=1)
    refined = [r for r in result.rules if r.origin == REFINED]
    texts = {r.text for r in refined}
    assert texts <= set(HELPFUL_RULES.values()) and {HELPFUL_RULES["percent"], HELPFUL_RULES["vans"]} <= texts
    assert all(r.verified for r in refined) and all(r.sources for r in refined)
    selected = {r.text for r in result.rules if r.id in result.selected_rule_ids}
    assert HELPFUL_RULES["percent"] in selected and HELPFUL_RULES["vans"] in selected
    assert result.best_score > result.baseline_score
    logged = [json.loads(line) for line in (tmp_path / "run" / REFINEMENTS_LOG).read_text().splitlines()]
    assert {r["parent"] for r in logged} == {r.id for r in result.rules if r.origin != REFINED}
    calls = near_miss.teacher_engine.calls
    again = _compile(near_miss, rounds=1)  # resume: the revisions are read back, the teacher is not asked again
    assert near_miss.teacher_engine.calls == calls and again.selected_rule_ids == result.selected_rule_ids


def test_a_revision_that_copies_its_examples_or_repeats_its_parent_is_dropped(near_miss):
    trainset = near_miss.trainset
    parent = Rule(id="r", text=NEAR_MISS["percent"], predictor="predict", sources=["m0"],
                  verification={"checked_mistakes": [1], "checked_correct": [0], "fixed": [], "broken": [0],
                                "kept": False})
    question = trainset[1].question
    number = next(w for w in question.split() if w.isdigit() and w not in {"10", "100", "60", "24", "12"})

    class Copier(SimulatedTeacher):
        def respond(self, instructions, inputs, outputs):
            return {"revised_rule": f"When the price is {number} dollars, subtract the percent."}

    class Repeater(SimulatedTeacher):
        def respond(self, instructions, inputs, outputs):
            return {"revised_rule": inputs["rule"]}

    for engine in (Copier(), Repeater()):
        revised = revise_rules([parent], program=dspy.ChainOfThought("question -> answer: float"),
                               trainset=trainset, teacher_lm=dspy.LM("simulated/t", engine=engine, cache=False),
                               priming="gold", retries=0, num_threads=1, stored={}, on_done=lambda record: None)
        assert revised == []
    assert question in describe_examples([1], trainset) and describe_examples([], trainset) == "(none)"


def test_a_teacher_outage_during_a_round_stops_the_compile(near_miss):
    from cd_dspy.core.failures import LMUnavailableError

    class DownOnRevision(NearMissTeacher):
        def respond(self, instructions, inputs, outputs):
            if "not_fixed" in inputs:
                raise ConnectionRefusedError("the teacher's server is gone")
            return super().respond(instructions, inputs, outputs)

    near_miss.teacher_engine = DownOnRevision()
    near_miss.teacher = dspy.LM("simulated/teacher", engine=near_miss.teacher_engine, cache=False)
    with pytest.raises(LMUnavailableError, match="teacher"):
        _compile(near_miss, rounds=1)


def test_the_gold_is_shown_only_when_the_priming_shows_it(near_miss):
    assert "expected" in describe_examples([0], near_miss.trainset, gold_shown=True)
    assert "expected" not in describe_examples([0], near_miss.trainset, gold_shown=False)


def test_rounds_must_be_a_non_negative_int(sim):
    with pytest.raises(ValueError, match="rounds must be an int of at least 0"):
        sim.optimizer(rounds=-1)
