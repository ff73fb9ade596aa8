"""Rule hygiene and consolidation (phase 2) with scripted teachers."""

from __future__ import annotations

import dspy

from cd_dspy.core.result import Explanation, Mistake
from cd_dspy.phases.induce import build_rules, clean_rule, dedupe, is_instance_specific, rule_id
from cd_dspy.testing.simulated import ScriptedEngine


class Consolidator(ScriptedEngine):
    """A teacher whose consolidation returns a fixed list (and counts its calls)."""

    def __init__(self, reply):
        super().__init__()
        self.reply = reply

    def respond(self, instructions, inputs, outputs):
        return {"rules": self.reply}


def mistake(i: int, question: str) -> Mistake:
    return Mistake(id=f"m{i}", example_index=i, inputs={"question": question}, gold={"answer": 1}, outputs={},
                   score=0.0, feedback=None, steps=[])


MISTAKES = [mistake(0, "Ava packs 125 stamps into bags of 8. How many are left?"),
            mistake(1, "A movie lasts 3 hours and 40 minutes. How many minutes?")]
PROGRAM = dspy.Predict("question -> answer: float")


def run(rules_by_mistake, reply, max_rules=5):
    engine = Consolidator(reply)
    teacher = dspy.LM("simulated/consolidator", engine=engine, cache=False)
    explanations = [Explanation(f"m{i}", "self", "why", rules) for i, rules in rules_by_mistake.items()]
    rules = build_rules(PROGRAM, explanations, MISTAKES, teacher_lm=teacher, priming=None, max_rules=max_rules,
                        consolidate=True, retries=0)
    return [r.text for r in rules], engine.calls, rules


def test_instance_specific_rules_are_generalised_or_dropped():
    assert is_instance_specific("Divide 125 by 8 and keep the rest.", [MISTAKES[0].inputs["question"]])
    assert is_instance_specific("Ava should count again.", ["Then Ava packs them."])
    assert not is_instance_specific("Multiply hours by 60 to get minutes.", [MISTAKES[1].inputs["question"]])
    code = 'def skjkasdkd(lst):\n    """Find the largest prime in lst."""\ndef sum_digits(n): ...'
    assert is_instance_specific("The function `skjkasdkd` is missing its prime check.", [code])
    assert is_instance_specific("Call sum_digits on the prime.", [code])
    assert not is_instance_specific("Write a helper `is_prime` before using it.", [code])
    texts, calls, _ = run({0: ["Divide 125 by 8 and keep the rest."]},
                          ["The remainder is what is left after filling whole bags.", "Divide 125 by 8."])
    assert calls == 1 and texts == ["The remainder is what is left after filling whole bags."]


def test_few_general_rules_skip_consolidation():
    texts, calls, rules = run({0: ["Use the remainder of the division."], 1: ["Multiply hours by 60."]}, [])
    assert calls == 0 and texts == ["Use the remainder of the division.", "Multiply hours by 60."]
    assert [r.sources for r in rules] == [["m0"], ["m1"]]
    assert [r.id for r in rules] == [rule_id("self", t) for t in texts] and len({r.id for r in rules}) == 2


def test_lossy_consolidation_does_not_lose_general_rules():
    general = ["Use the remainder of the division.", "Multiply hours by 60 to get minutes."]
    texts, calls, _ = run({0: [general[0], "Divide 125 by 8."], 1: [general[1]]}, [general[0]])
    assert calls == 1 and texts == general


def test_consolidation_respects_max_rules_and_provenance():
    many = {0: [f"Rule number {w} about remainders." for w in ("one", "two", "three")],
            1: ["Multiply hours by sixty.", "Add the minutes afterwards."]}
    texts, calls, rules = run(many, ["Use remainders carefully.", "Multiply hours by sixty and add minutes."],
                              max_rules=2)
    assert calls == 1 and len(texts) == 2
    assert rules[1].sources == ["m1"]


def test_dedupe_and_clean():
    assert clean_rule("  2) Rule: round up  ") == "round up"
    merged = dedupe([("Round the answer up.", ["m1"]), ("round the answer up", ["m2"]), ("Other.", ["m3"])])
    assert merged == [("Round the answer up.", ["m1", "m2"]), ("Other.", ["m3"])]
