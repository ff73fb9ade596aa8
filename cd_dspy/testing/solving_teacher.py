"""A simulated teacher that solves the simulated world's problems (`cd_dspy.testing.simulated`), for tests and demos of
distillation without a model: it knows the helpful rules for percent and van problems but not the unit
conversion, so its unit answers are wrong (and rejected by the metric) unless it is shown the gold answer
(priming `gold`), which it then derives. The teacher's priming shows in its reasoning."""

from __future__ import annotations

import re
from typing import Any

import dspy

from cd_dspy.testing.simulated import HELPFUL_RULES, SimulatedTarget

_GOLD = re.compile(r"You are given the correct answer: (-?\d+(?:\.\d+)?)")


class SolvingTeacher(SimulatedTarget):
    """Answers task requests like a target that knows two of the three helpful rules."""

    model = "simulated-solver"

    def respond(self, instructions: str, inputs: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        gold = _GOLD.search(instructions)
        style = "Step by step, as a teacher:" if instructions.startswith("As a teacher") else "Reasoning:"
        if gold and "answer" in outputs:
            return {"reasoning": f"{style} the steps lead to {gold.group(1)}.", "answer": gold.group(1)}
        known = f"{instructions}\n{HELPFUL_RULES['percent']}\n{HELPFUL_RULES['vans']}"
        reply = super().respond(known, inputs, outputs)
        if "reasoning" in reply:
            reply["reasoning"] = f"{style} {reply['reasoning']}"
        return reply


def solving_teacher_lm() -> dspy.LM:
    """The solving teacher as a `dspy.LM` (cache off)."""
    return dspy.LM("simulated/simulated-solver", engine=SolvingTeacher(), cache=False)
