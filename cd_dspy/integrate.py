"""Phase 4: write rules into the instructions of a deep copy of the program.

The format is stable and readable, so a saved program shows exactly what was added:

    <original instructions>

    Follow these rules:
    - <rule>
    - <rule>
"""

from __future__ import annotations

from collections.abc import Sequence

import dspy

from cd_dspy.result import Rule

RULES_HEADER = "Follow these rules:"


def render_instructions(instructions: str, rules: Sequence[str]) -> str:
    if not rules:
        return instructions
    bullets = "\n".join(f"- {rule}" for rule in rules)
    return f"{instructions.rstrip()}\n\n{RULES_HEADER}\n{bullets}"


def with_rules(program: dspy.Module, rules: Sequence[Rule], lm=None) -> dspy.Module:
    """A deep copy of `program` whose predictors' instructions hold their rules, with `lm` (if given)
    bound to the predictors that have no LM of their own (a step that deliberately runs on another LM
    keeps it).

    Only `signature.with_instructions` is used: signature classes are shared between copies, so
    assigning to `signature.instructions` would change the user's program too.
    """
    compiled = program.deepcopy()
    for name, pred in compiled.named_predictors():
        texts = [r.text for r in rules if r.predictor == name]
        if texts:
            pred.signature = pred.signature.with_instructions(render_instructions(pred.signature.instructions, texts))
        if lm is not None and pred.lm is None:
            pred.lm = lm
    return compiled
