"""Deterministic simulated LMs (DSPy 3.4 engines) for tests, demos and the simulated benchmark.

The world: four kinds of word problem. The simulated *target* solves "add" problems, but has a
blind spot on each other kind that one specific rule removes, and it obeys a harmful rule (round
answers down) to its cost. The simulated *teacher* explains each mistake by proposing the helpful
rule for its kind, a neutral rule, an instance-specific rule (numbers copied from the question),
and, on unit problems, the harmful rule; asked the task itself, it answers as the target would with
every helpful rule (the strong source model of a migration). In a two-step program (plan, then solve)
the unit blind spot lives in the planning step, so its rule only helps there.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import threading
import time
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from cd_dspy.programs.simulated_task import (  # noqa: F401 (the world's data, re-exported for tests)
    TEMPLATES,
    answer_match,
    kind_of,
    make_problem,
    numbers_of,
    simulated_dataset,
    simulated_splits,
)

HELPFUL_RULES = {
    "percent": "When a price is a percent off, multiply the price by (100 - percent) / 100.",
    "units": "Convert minutes to hours by dividing the minutes by 60 before adding them to the hours.",
    "vans": "When counting the containers needed, round the division up to the next whole number.",
}
HARMFUL_RULE = "Always round the final answer down to a whole number."
NEUTRAL_RULE = "Read the question carefully before answering."

# --- the engine plumbing ------------------------------------------------------------------------

class ScriptedEngine:
    """Reads a DSPy request (instructions, input fields) and replies in the adapter's format.

    `latency` seconds are slept per call, as a remote API would take (it changes no answer, so it is not
    part of the LM's key)."""

    model = "simulated"

    def __init__(self, latency: float = 0.0) -> None:
        self.calls = 0
        self.latency = latency
        self._lock = threading.Lock()
        self._request = threading.local()  # what the request being answered on this thread showed

    @property
    def demo_questions(self) -> list[str]:
        """The questions of the demonstrations (earlier user turns) in the request being answered."""
        return getattr(self._request, "demo_questions", [])

    def respond(self, instructions: str, inputs: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """A request's prompt tokens as this engine counts them: words (`cd_dspy.core.usage.prompt_tokens`)."""
        return sum(len(str(m.get("content", "")).split()) for m in messages)

    def complete(self, request) -> Response:
        with self._lock:
            self.calls += 1
        if self.latency:
            time.sleep(self.latency)
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
        user = request.messages[-1].text or ""
        _, _, objective = system.partition("your objective is:")
        instructions = textwrap.dedent(objective.strip("\n")).strip()
        output_block = system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
        outputs = re.findall(r"^\d+\. `(\w+)`", output_block, flags=re.M)
        inputs = dict(re.findall(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", user, flags=re.S))
        self._request.demo_questions = [q for m in request.messages[:-1] if m.role == "user"
                                        for q in re.findall(r"\[\[ ## question ## \]\]\n(.*?)(?:\n\n|\Z)", m.text or "",
                                                            flags=re.S)]
        reply = self.respond(instructions, inputs, outputs)
        if "JSON" in user:
            text = json.dumps({k: reply.get(k, "") for k in outputs})
        else:
            text = "\n\n".join(f"[[ ## {k} ## ]]\n{_chat_value(reply.get(k, ''))}" for k in outputs)
            text += "\n\n[[ ## completed ## ]]"
        tokens = len(system.split()) + len(user.split())
        return Response(id=None, model=self.model, message=Message.assistant((TextPart(text),)), finish_reason="stop",
                        usage=Usage(input_tokens=tokens, output_tokens=len(text.split())))

    def stream(self, request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass

    def __deepcopy__(self, memo: dict) -> ScriptedEngine:
        return self  # an engine is a shared handle (its counters and lock belong to the model)

    def dump_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> ScriptedEngine:
        return cls()


def _chat_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class SimulatedTarget(ScriptedEngine):
    """A weak model with blind spots; each HELPFUL_RULES entry in its instructions removes one, and so does a
    worked demonstration of a problem of the same kind in its prompt (an exemplar it imitates), except for
    "units" problems, which only their rule fixes."""

    model = "simulated-target"

    def respond(self, instructions: str, inputs: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        question = inputs.get("question", "")
        kind = kind_of(question)
        shown = {kind_of(q) for q in self.demo_questions} - {None}
        instructions += "".join(f"\n{HELPFUL_RULES[k]}" for k in shown if k in HELPFUL_RULES and k != "units")
        if "plan" in outputs:  # the planning step of a two-step program
            converts = HELPFUL_RULES["units"] in instructions
            return {"plan": "1. Convert minutes to hours. 2. Add." if converts else "1. Add the numbers.",
                    "reasoning": "Plan the steps."}
        if kind is None:
            return {"reasoning": "I do not know.", "answer": "0"}
        a, b = numbers_of(question)
        answer = TEMPLATES[kind][1](a, b)
        if kind == "percent" and HELPFUL_RULES["percent"] not in instructions:
            answer = a - b  # subtracts the percent as if it were dollars
        if kind == "vans" and HELPFUL_RULES["vans"] not in instructions:
            answer = a // b  # rounds down
        if kind == "units":
            if "plan" in inputs:  # two-step program: only the plan can carry the conversion
                fixed = "Convert minutes" in inputs["plan"]
            else:
                fixed = HELPFUL_RULES["units"] in instructions
            if not fixed:
                answer = float(f"{a}.{b}")  # reads "2 hours 30 minutes" as 2.30
        if HARMFUL_RULE in instructions:
            answer = math.floor(answer)
        return {"reasoning": f"The question is about {kind}.", "answer": f"{answer:g}"}


class SimulatedTeacher(ScriptedEngine):
    """Explains target mistakes with helpful, harmful, neutral and instance-specific rules."""

    model = "simulated-teacher"

    def respond(self, instructions: str, inputs: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        if "question" in inputs and ("answer" in outputs or "plan" in outputs):  # the task itself (a source LM)
            return SimulatedTarget().respond(instructions + "\n" + "\n".join(HELPFUL_RULES.values()), inputs, outputs)
        if "candidate_rules" in inputs:  # consolidation: keep the distinct rules
            rules = list(dict.fromkeys(json.loads(inputs["candidate_rules"])))
            return {"rules": rules[: int(inputs.get("max_rules", len(rules)))]}
        if "not_fixed" in inputs:  # a refinement round: the helpful rule of the kind it did not fix
            kind = kind_of(inputs["not_fixed"].replace('\\"', '"'))
            return {"revised_rule": HELPFUL_RULES.get(kind, inputs.get("rule", ""))}
        attempt = inputs.get("student_attempt", "")
        kind = kind_of(attempt.replace('\\"', '"'))
        steps = json.loads(inputs.get("steps", "[]") or "[]")
        if kind not in HELPFUL_RULES:
            return {"explanation": "Unclear.", "step": steps[-1] if steps else "", "rules": [NEUTRAL_RULE]}
        a, b = numbers_of(attempt)
        step = next((s for s in steps if "plan" in s), steps[-1]) if kind == "units" else steps[-1]
        rules = [HELPFUL_RULES[kind], NEUTRAL_RULE, f"For {a} and {b}, the answer is {TEMPLATES[kind][1](a, b):g}."]
        if kind == "units":
            rules.append(HARMFUL_RULE)
        return {"explanation": f"The student mishandled a {kind} problem.", "step": step, "rules": rules}


def simulated_lms(latency: float = 0.0) -> tuple[dspy.LM, dspy.LM]:
    """(target, teacher) as `dspy.LM`s over fresh simulated engines (cache off: calls are counted)."""
    target = dspy.LM("simulated/target", engine=SimulatedTarget(latency), cache=False)
    teacher = dspy.LM("simulated/teacher", engine=SimulatedTeacher(latency), cache=False)
    return target, teacher


def worker_setup(latency: float = 0.0) -> tuple[dspy.Module, Any, dspy.LM]:
    """(program, metric, target LM) of the simulated world, for
    `Workers(setup="cd_dspy.testing.simulated:worker_setup")`."""
    return dspy.ChainOfThought("question -> answer: float"), answer_match, simulated_lms(latency)[0]
