"""Defaults of `ConceptDistillation`'s settings: the `auto` presets and the number of parallel LM calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dspy


@dataclass(frozen=True)
class Preset:
    max_mistakes: int
    max_rules: int
    num_trials: int


AUTO_PRESETS = {
    "light": Preset(max_mistakes=8, max_rules=5, num_trials=10),
    "medium": Preset(max_mistakes=16, max_rules=8, num_trials=24),
    "heavy": Preset(max_mistakes=32, max_rules=12, num_trials=48),
}


def default_threads(*lms: Any) -> int:
    """DSPy's `num_threads` for remote LMs; 1 when an LM runs in this process (an embedded model gains
    nothing from threads on a small machine, and calls queued past DSPy's straggler timeout would be
    sent twice)."""
    if any(in_process(lm) for lm in lms):
        return 1
    return int(dspy.settings.num_threads or 1)


def in_process(lm: Any) -> bool:
    """Whether `lm` runs on an engine object of its own (a local model, a simulated one) rather than DSPy's
    provider engines, named by a string ('auto', 'lm15', 'litellm') on DSPy 3.4's public `LM.engine`."""
    engine = getattr(lm, "engine", None)
    return engine is not None and not isinstance(engine, str)
