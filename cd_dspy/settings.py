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
    if any(not isinstance(getattr(lm, "_engine_spec", None), str | None) for lm in lms):
        return 1
    return int(dspy.settings.num_threads or 1)
