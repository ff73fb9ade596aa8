"""What about an LM changes its answers (the model, its settings, its engine's state), without secrets.

Secrets (api_key, hf_token, vertex_credentials, ...) never enter a key or a saved file; max_tokens does (it
changes answers).
"""

from __future__ import annotations

import copy
import re
from typing import Any

_SECRET = re.compile(r"key|secret|password|auth|credential|token$", re.I)


def lm_state(lm: Any) -> dict[str, Any] | None:
    """What about an LM changes its answers: the model and its settings, without secrets."""
    if lm is None:
        return None
    kwargs = getattr(lm, "kwargs", {}) or {}
    engine = getattr(lm, "engine", None)  # an in-process engine's settings (e.g. grammar) change answers too
    engine = getattr(engine, "inner", engine)  # a wrapping engine (fault injection): its answers are the inner's
    dump = getattr(engine, "dump_state", None)
    state = dump() if callable(dump) else None
    return {"model": getattr(lm, "model", str(lm)), "model_type": getattr(lm, "model_type", None),
            "engine": without_secrets(state) if isinstance(state, dict) else state, **without_secrets(kwargs)}


def without_secrets(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` without the entries named like secrets (api_key, hf_token, aws_secret_access_key, ...)."""
    return {k: v for k, v in settings.items() if not _SECRET.search(str(k))}


def lm_without_secrets(lm: Any) -> Any:
    """A shallow copy of `lm` whose kwargs hold no secrets, to save: DSPy's `LM.dump_state` drops `api_key` only
    (an `hf_token` or `aws_secret_access_key` kwarg would be written to the file)."""
    clean = copy.copy(lm)
    clean.kwargs = without_secrets(getattr(lm, "kwargs", None) or {})
    return clean
