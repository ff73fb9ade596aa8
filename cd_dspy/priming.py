"""Response priming for the teacher (arXiv 2412.17846).

A fixed instruction is put in front of every teacher call. The paper's strategies are "teacher",
"ground_truth" and "confidence" (and none); here the gold answer is always shown to the teacher,
and "ground_truth" also tells it to reason backwards from that answer. Any other string is used
verbatim as a custom priming instruction.
"""

from __future__ import annotations

PRIMING_STRATEGIES: dict[str, str] = {
    "none": "",
    "teacher": (
        "Act as a patient teacher of a beginner student model. Explain simply and concretely, "
        "so that a small model can follow your advice."
    ),
    "ground_truth": (
        "You are given the correct answer. Work out how the correct answer is reached, compare it "
        "with the student's attempt, and give a detailed explanation smaller models can learn from."
    ),
    "confidence": "Double-check your reasoning and your answer before you reply.",
}

DEFAULT_PRIMING = "ground_truth"


def priming_text(strategy: str | None) -> str:
    """The priming instruction for a strategy name, or the custom text itself."""
    if strategy is None:
        return ""
    if not isinstance(strategy, str):
        raise TypeError(f"priming must be one of {sorted(PRIMING_STRATEGIES)} or a custom string, got {strategy!r}.")
    return PRIMING_STRATEGIES.get(strategy, strategy)


def primed(instructions: str, strategy: str | None) -> str:
    """`instructions` with the priming instruction in front."""
    prefix = priming_text(strategy)
    return f"{prefix}\n\n{instructions}" if prefix else instructions
