"""Local models for cd-dspy: a catalog of GGUF models on PyPI and a llama.cpp engine for ``dspy.LM``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dspy

from .catalog import (
    CATALOG,
    DEFAULT_TARGET,
    DEFAULT_TEACHER,
    ModelNotInstalledError,
    ensure_model,
    get_spec,
    list_models,
)
from .llama_engine import LlamaCppEngine, clear_model_cache

__all__ = [
    "CATALOG",
    "DEFAULT_TARGET",
    "DEFAULT_TEACHER",
    "LlamaCppEngine",
    "ModelNotInstalledError",
    "clear_model_cache",
    "ensure_model",
    "list_models",
    "local_lm",
]

_ENGINE_KEYS = {"n_ctx", "n_threads", "n_batch", "repeat_penalty", "top_k", "top_p", "seed", "verbose", "grammar",
                "prompt_cache_mb"}


def local_lm(name_or_path: str | os.PathLike, *, role: str | None = None, **settings: Any) -> dspy.LM:
    """A ``dspy.LM`` running a catalog model (e.g. ``"qwen2.5-coder-0.5b"``) or any ``.gguf`` file in-process.

    ``role`` ("target"/"teacher") picks the default ``max_tokens``. Engine settings (n_ctx, n_threads,
    repeat_penalty, ...) go to ``LlamaCppEngine``; the rest (max_tokens, temperature, cache, ...) to
    ``dspy.LM``.
    Programs saved with this LM load back with ``program.load(path, allow_unsafe_lm_state=True)``.
    """
    name = str(name_or_path)
    if name in CATALOG:
        spec = get_spec(name)
        ensure_model(name)  # fail early with an install hint, before any DSPy call
        max_tokens = spec.default_max_tokens(role)
        alias = name
    elif name.endswith(".gguf") or Path(name).expanduser().is_file():
        max_tokens = 1024 if role == "teacher" else 512
        alias = Path(name).stem
    else:
        get_spec(name)  # raises ValueError listing the catalog
        raise AssertionError("unreachable")
    engine_settings = {k: settings.pop(k) for k in list(settings) if k in _ENGINE_KEYS}
    engine = LlamaCppEngine(name, **engine_settings)
    lm_kwargs: dict[str, Any] = {"cache": True, "temperature": 0.0, "max_tokens": max_tokens}
    lm_kwargs.update(settings)
    return dspy.LM(f"local/{alias}", engine=engine, **lm_kwargs)
