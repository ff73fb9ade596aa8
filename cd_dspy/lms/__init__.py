"""Local models for cd-dspy: a catalog of GGUF models on PyPI and a llama.cpp engine for ``dspy.LM``."""

from __future__ import annotations

import hashlib
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
                "prompt_cache_mb", "lora_path", "lora_scale", "flash_attn"}


def local_lm(name_or_path: str | os.PathLike, *, role: str | None = None, **settings: Any) -> dspy.LM:
    """A ``dspy.LM`` running a catalog model (e.g. ``"qwen2.5-coder-0.5b"``) or any ``.gguf`` file in-process.

    ``role`` ("target"/"teacher") picks the default ``max_tokens``. Engine settings (n_ctx, n_threads,
    repeat_penalty, ...) go to ``LlamaCppEngine``; the rest (max_tokens, temperature, cache, ...) to
    ``dspy.LM``. ``lora_path`` serves a llama.cpp LoRA adapter on top of the model; the LM's name then
    carries a hash of the adapter file, so DSPy's cache never mixes its answers with the base model's.
    ``flash_attn=True`` uses llama.cpp's flash attention (faster on this CPU: examples/results/engine.md).
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
    if engine.lora_path:
        scale = f"x{engine.lora_scale:g}" if engine.lora_scale != 1 else ""
        alias += f"+lora-{_file_digest(engine.lora_path)}{scale}"
    if engine.flash_attn:  # other numerics, so other greedy answers: never mixed in DSPy's cache
        alias += "+fa"
    lm_kwargs: dict[str, Any] = {"cache": True, "temperature": 0.0, "max_tokens": max_tokens}
    lm_kwargs.update(settings)
    return dspy.LM(f"local/{alias}", engine=engine, **lm_kwargs)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:10]
