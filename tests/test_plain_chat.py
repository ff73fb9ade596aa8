"""PlainChatAdapter and the HumanEval program built on it: the request a person would send, the reply's code."""

from __future__ import annotations

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, Usage
from dspy.utils.exceptions import AdapterParseError

from cd_dspy.core.result import Rule
from cd_dspy.phases.integrate import with_rules
from cd_dspy.programs import get_task, make_adapter
from cd_dspy.programs.humaneval import CompleteFunction, entry_point_of, humaneval_metric, load_humaneval
from cd_dspy.programs.plain_chat import PlainChatAdapter


class ReplyEngine:
    """Answers every request with `reply` and keeps the requests' messages."""

    model = "reply"

    def __init__(self, reply: str) -> None:
        self.reply, self.requests = reply, []

    def complete(self, request) -> Response:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
        self.requests.append({"system": system, "messages": [(m.role, m.text) for m in request.messages]})
        return Response(id=None, model=self.model, message=Message.assistant((TextPart(self.reply),)),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))

    def stream(self, request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def reply_lm(reply: str) -> tuple[dspy.LM, ReplyEngine]:
    engine = ReplyEngine(reply)
    return dspy.LM("simulated/reply", engine=engine, cache=False), engine


@pytest.fixture(scope="module")
def problem() -> dspy.Example:
    return load_humaneval(seed=0, n_train=1, n_val=0, n_test=0)["train"][0]


def test_request_is_the_plain_chat_harness_request(problem):
    """Byte for byte the request of the harness ablation's plain-chat variant (its measured baseline)."""
    from conftest import load_example

    harness = load_example("harness_ablation")
    messages = PlainChatAdapter().format(CompleteFunction, [], {"prompt": problem.prompt})
    assert messages == [{"role": "user", "content": harness.PLAIN_CODE.format(prompt=problem.prompt)}]


def test_program_extracts_the_prompts_function_and_passes_the_tests(problem):
    solution = problem.prompt + problem.canonical_solution
    reply = f"Sure.\n```python\ndef helper():\n    return 1\n```\nThe function:\n```python\n{solution}```\nDone."
    lm, engine = reply_lm(reply)
    program = get_task("humaneval").make_program()
    with dspy.context(lm=lm, adapter=make_adapter(get_task("humaneval").adapter)):
        pred = program(prompt=problem.prompt)
    assert entry_point_of(problem.prompt) == problem.entry_point
    assert pred.code.strip() == solution.strip() and humaneval_metric(problem, pred) == 1.0
    [request] = engine.requests
    assert request["system"] == "" and [role for role, _ in request["messages"]] == ["user"]
    assert "[[ ##" not in request["messages"][0][1] and "JSON" not in request["messages"][0][1]


def test_rules_reach_the_model_and_the_users_program_is_unchanged(problem):
    program = get_task("humaneval").make_program()
    rule = Rule(id="R1", text="Handle the empty list first.", predictor="generate")
    ruled = with_rules(program, [rule])
    lm, engine = reply_lm("```python\npass\n```")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        ruled(prompt=problem.prompt)
        program(prompt=problem.prompt)
    with_rule, without = (msgs[0][1] for msgs in (r["messages"] for r in engine.requests))
    assert rule.text in with_rule and rule.text not in without
    assert with_rule.index(rule.text) < with_rule.index(problem.prompt.strip())


def test_demos_become_earlier_turns():
    demo = {"prompt": "def f():\n", "code": "```python\ndef f():\n    return 1\n```"}
    incomplete = {"prompt": "a demo with no code"}
    messages = PlainChatAdapter().format(CompleteFunction, [demo, incomplete], {"prompt": "def g():\n"})
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == demo["code"] and messages[2]["content"].endswith("def g():\n")


def test_fine_tuning_records_show_the_reply_as_the_model_writes_it():
    """A distillation record (`chat_messages`) is the request and the bare reply; other signatures: ChatAdapter's."""
    from cd_dspy.distill.data import chat_messages

    reply = "```python\ndef g():\n    return 2\n```"
    messages = chat_messages(PlainChatAdapter(), CompleteFunction, [], {"prompt": "def g():\n"}, {"code": reply})
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == reply
    qa = dspy.Signature("question -> answer")
    other = chat_messages(PlainChatAdapter(), qa, [], {"question": "2+2?"}, {"answer": "4"})
    assert other == chat_messages(dspy.ChatAdapter(), qa, [], {"question": "2+2?"}, {"answer": "4"})
    assert "[[ ## answer ## ]]" in other[-1]["content"]


def test_other_signatures_go_to_the_fallback_adapter():
    """A teacher's or multi-output signature is formatted by ChatAdapter, so the adapter can be set for a compile."""
    lm, engine = reply_lm("[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        pred = dspy.ChainOfThought("question -> answer")(question="2+2?")
    assert pred.answer == "4" and "[[ ## question ## ]]" in engine.requests[0]["messages"][-1][1]
    assert not PlainChatAdapter().handles(dspy.Signature("prompt -> code: list[str]"))
    assert PlainChatAdapter(fields=("answer",)).handles(dspy.Signature("question -> answer"))


def test_several_inputs_are_named_blocks():
    sig = dspy.Signature("spec, tests -> code", "Write the code.")
    [message] = PlainChatAdapter().format(sig, [], {"spec": "S", "tests": "T"})
    assert message["content"] == "Write the code.\n\nspec:\nS\n\ntests:\nT"


def test_empty_reply_is_a_parse_error():
    with pytest.raises(AdapterParseError, match="empty"):
        PlainChatAdapter().parse(CompleteFunction, "  \n")
