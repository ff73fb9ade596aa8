"""The priming set (cd_dspy.core.priming): each strategy's text, the gold shown only by `gold`, custom text and
callables, bad input; CD's explanation step shows the gold and the metric's feedback only under `gold`; the
phase key follows the strategy."""

from __future__ import annotations

import json

import dspy
import pytest

from cd_dspy.core.priming import (
    DEFAULT_PRIMING,
    PRIMING_STRATEGIES,
    check_priming,
    format_gold,
    primed,
    priming_key,
    priming_name,
    priming_text,
    shows_gold,
)
from cd_dspy.core.result import Mistake, Solution
from cd_dspy.phases.induce import GOLD_HIDDEN, explain_mistakes

INPUTS, GOLD = {"question": "What is 6 * 7?"}, {"answer": 42.0}


def test_the_named_set_and_the_papers_wording():
    assert set(PRIMING_STRATEGIES) == {"none", "teacher", "confidence", "ground_truth", "gold"}
    assert DEFAULT_PRIMING == "gold"
    assert priming_text("none", INPUTS, GOLD) == "" and priming_text(None, INPUTS, GOLD) == ""
    assert priming_text("teacher").startswith("As a teacher, guide your student")
    assert priming_text("confidence") == "Briefly double-check that your answer is correct once done."
    assert "feasible for smaller models to understand and learn from" in priming_text("ground_truth")


@pytest.mark.parametrize("strategy", ["none", "teacher", "confidence", "ground_truth"])
def test_only_gold_shows_the_gold(strategy):
    assert not shows_gold(strategy)
    assert "42" not in priming_text(strategy, INPUTS, GOLD)


def test_gold_shows_the_answer_and_asks_for_its_justification():
    assert shows_gold("gold")
    text = priming_text("gold", INPUTS, GOLD, fields=["reasoning", "answer"])
    assert "correct answer: 42." in text and "justify every step" in text
    assert priming_text("gold", INPUTS, None) == PRIMING_STRATEGIES["ground_truth"]  # no example: consolidation
    assert format_gold({"answer": 2.5, "kind": "units"}, ["answer"]) == "2.5"
    assert format_gold({"a": 1, "b": "x"}, ["c"]) == "a: 1; b: x"


def test_primed_puts_the_text_in_front():
    assert primed("Solve it.", "confidence") == f"{PRIMING_STRATEGIES['confidence']}\n\nSolve it."
    assert primed("Solve it.", "none") == "Solve it."


def test_custom_text_and_callables():
    custom = "Explain like a careful tutor."
    assert priming_text(custom) == custom and priming_name(custom) == "custom" and not shows_gold(custom)

    def hint(inputs, gold):
        return f"The answer to {inputs['question']!r} is {gold['answer']:g}."

    assert priming_text(hint, INPUTS, GOLD) == "The answer to 'What is 6 * 7?' is 42."
    assert priming_name(hint).endswith("test_custom_text_and_callables.<locals>.hint")
    hint.shows_gold = True
    assert shows_gold(hint)

    class Named:
        name = "socratic"

        def __call__(self, inputs, gold):
            return "Ask yourself questions."

    assert priming_name(Named()) == "socratic"
    assert priming_key(Named())["name"] == "socratic"


@pytest.mark.parametrize("bad, error, fix", [
    ("ground-truth", ValueError, "use one of"),
    ("Teacher", ValueError, "use one of"),
    ("", ValueError, "use 'none'"),
    (3, TypeError, "custom sentence"),
    (lambda inputs, gold: "x", TypeError, "set a `name` attribute"),
])
def test_bad_priming_is_a_clear_error(bad, error, fix):
    with pytest.raises(error, match=fix):
        check_priming(bad)


def test_a_callable_must_return_text():
    def broken(inputs, gold):
        return 42

    with pytest.raises(TypeError, match="must return the priming text"):
        priming_text(broken, INPUTS, GOLD)


def test_priming_key_changes_with_the_strategy_and_its_text():
    keys = {json.dumps(priming_key(s), sort_keys=True) for s in [*PRIMING_STRATEGIES, "Be brief and exact."]}
    assert len(keys) == len(PRIMING_STRATEGIES) + 1


class RecordingTeacher:
    """A teacher engine that records the explanation requests it gets (and answers them)."""

    def __init__(self):
        self.requests: list[str] = []

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        self.requests.append(system + "\n" + (request.messages[-1].text or ""))
        reply = {"explanation": "The student added.", "step": "predict", "rules": ["When multiplying, multiply."]}
        return Response(id=None, model="rec", message=Message.assistant((TextPart(json.dumps(reply)),)),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))


@pytest.mark.parametrize("strategy, gold_seen", [("gold", True), ("ground_truth", False), ("teacher", False),
                                                  ("none", False)])
def test_cd_explanations_show_the_gold_and_feedback_only_under_gold(strategy, gold_seen):
    engine = RecordingTeacher()
    teacher = dspy.LM("rec/teacher", engine=engine, cache=False)
    mistake = Mistake(id="m1", example_index=0, inputs={"question": "What is 6 * 7?"}, gold={"answer": 4242.0},
                      outputs={"answer": 13.0}, score=0.0, feedback="expected 4242, got 13", steps=[])
    with dspy.context(adapter=dspy.JSONAdapter()):
        solution = Solution("m1", ok=True, score=1.0, priming=strategy, steps=[
            {"predictor": "self", "inputs": mistake.inputs, "outputs": {"reasoning": "six sevens, times 101"}}])
        explained = explain_mistakes(dspy.Predict("question -> answer: float"), [mistake], teacher_lm=teacher,
                                     priming=strategy, num_threads=1, retries=0, on_done=lambda e: None,
                                     solutions={"m1": solution})
    assert explained[0].rules == ["When multiplying, multiply."]
    (request,) = engine.requests
    assert "six sevens, times 101" in request  # explanations contrast the attempt with the checked solution
    assert ("4242" in request) is gold_seen
    assert ("expected 4242, got 13" in request) is gold_seen
    assert (GOLD_HIDDEN in request) is not gold_seen
    assert "score 0" in request
