"""A DSPy 3.4 engine running GGUF models in-process through llama-cpp-python."""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

from dspy.clients.engines.base import validate_request
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

__all__ = ["LlamaCppEngine", "to_llama_response_format", "clear_model_cache"]

LLAMA_INSTALL_HINT = (
    'llama-cpp-python is not installed. Fix: pip install "cd-dspy[local]"   '
    "(or: pip install llama-cpp-python; it builds from source, ~6 min on 2 cores)"
)

# One loaded Llama (and the lock serialising it) per (path, n_ctx, LoRA adapter, its scale) in this process.
_MODELS: dict[tuple[str, int, str | None, float], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()
# Factory used to build a Llama; tests replace it with a fake.
_LLAMA_FACTORY: Any = None


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        from .catalog import ModelNotInstalledError

        raise ModelNotInstalledError(LLAMA_INSTALL_HINT) from exc
    return llama_cpp


def _llama_factory():
    return _LLAMA_FACTORY or _import_llama_cpp().Llama


def _shared_llama(path: str, n_ctx: int, load_kwargs: dict[str, Any], lora_path: str | None = None,
                  lora_scale: float = 1.0, flash_attn: bool = False) -> tuple[Any, threading.Lock]:
    lora = str(Path(lora_path).resolve()) if lora_path else None
    key = (str(Path(path).resolve()), int(n_ctx), lora, float(lora_scale) if lora else 1.0, bool(flash_attn))
    with _MODELS_LOCK:
        if key not in _MODELS:
            adapter = {"lora_path": lora, "lora_scale": key[3]} if lora else {}
            fa = {"flash_attn": True} if flash_attn else {}
            llama = _llama_factory()(model_path=key[0], n_ctx=key[1], **load_kwargs, **adapter, **fa)
            _MODELS[key] = (llama, threading.Lock())
        return _MODELS[key]


def clear_model_cache() -> None:
    """Close and forget every loaded Llama."""
    with _MODELS_LOCK:
        for llama, lock in _MODELS.values():
            with lock:
                close = getattr(llama, "close", None)
                if callable(close):
                    close()
        _MODELS.clear()


# Close models before interpreter teardown (llama.cpp's __del__ fails noisily otherwise).
atexit.register(clear_model_cache)


def to_llama_response_format(response_format: Any) -> dict[str, Any] | None:
    """Convert DSPy's ``response_format`` to llama.cpp's form ``{"type": "json_object", "schema": ...}``.

    Accepts ``{"type": "json_object"}``, DSPy's ``{"type": "json_schema", "schema": ...}``, OpenAI's
    ``{"type": "json_schema", "json_schema": {"schema": ...}}``, a pydantic model class or a bare JSON schema.
    """
    if response_format is None:
        return None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return {"type": "json_object", "schema": response_format.model_json_schema()}
    if not isinstance(response_format, dict):
        raise TypeError(f"Unsupported response_format of type {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = response_format.get("schema")
        if schema is None and isinstance(inner, dict):
            schema = inner.get("schema", inner)
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    if "properties" in response_format or kind == "object":
        return {"type": "json_object", "schema": response_format}
    raise ValueError(f"Unsupported response_format: {response_format!r}")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(p, "text", "") or "" for p in content)


GRAMMAR_MODES = ("always", "on_failure", "never")
_TYPES = {"number": (int, float), "integer": (int,), "string": (str,), "boolean": (bool,), "array": (list,),
          "object": (dict,)}


def conforms(text: str, schema: dict[str, Any] | None) -> bool:
    """True when `text` holds a JSON object with the schema's required properties, of its types."""
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start:end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        return False
    if not isinstance(value, dict):
        return False
    properties = (schema or {}).get("properties", {})
    for name in (schema or {}).get("required", list(properties)):
        if name not in value:
            return False
        kind = properties.get(name, {}).get("type")
        types = _TYPES.get(kind) if isinstance(kind, str) else None
        if types and (not isinstance(value[name], types) or (kind != "boolean" and isinstance(value[name], bool))):
            return False
    return True


class LlamaCppEngine:
    """DSPy engine over ``llama_cpp.Llama``: chat template, greedy default, JSON as DSPy asks.

    The model is loaded lazily on the first call and shared per (path, n_ctx, LoRA) across engines;
    calls are serialised with one lock per model, so ``dspy.Evaluate`` threads are safe.
    ``grammar`` decides how DSPy's JSON schema is enforced: "always" samples under the llama.cpp
    grammar (about half the decode speed), "on_failure" samples freely and re-samples under the
    grammar only when the reply does not conform, "never" never uses it. ``lora_path`` applies a
    llama.cpp LoRA adapter (GGUF, e.g. from ``cd_dspy.distill.convert_lora``) at ``lora_scale``.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"response_format", "temperature", "max_tokens", "stop", "seed"})

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        repeat_penalty: float = 1.1,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        prompt_cache_mb: int = 0,
        grammar: str = "always",
        lora_path: str | os.PathLike | None = None,
        lora_scale: float = 1.0,
        flash_attn: bool = False,
        verbose: bool = False,
    ) -> None:
        from .catalog import CATALOG

        if grammar not in GRAMMAR_MODES:
            raise ValueError(f"grammar must be one of {GRAMMAR_MODES}, got {grammar!r}.")
        self.grammar = grammar
        self.stats = {"free": 0, "grammar": 0, "fallbacks": 0}  # completions by mode; free replies redone
        model = str(model)
        self.catalog_name = model if model in CATALOG else None
        self._path = None if self.catalog_name else str(Path(model).expanduser())
        if self._path is not None and not Path(self._path).is_file():
            raise FileNotFoundError(
                f"GGUF model file not found: {self._path}. Pass an existing .gguf path or a catalog name "
                f"({', '.join(sorted(CATALOG))})."
            )
        self.lora_path = str(Path(lora_path).expanduser()) if lora_path else None
        if self.lora_path is not None and not Path(self.lora_path).is_file():
            raise FileNotFoundError(f"LoRA adapter not found: {self.lora_path}. Pass the .gguf adapter that "
                                    "cd_dspy.distill.convert_lora (or `cd-dspy distill`) wrote.")
        self.lora_scale = float(lora_scale)
        self.flash_attn = bool(flash_attn)
        self.n_ctx = int(n_ctx or (CATALOG[model].n_ctx if self.catalog_name else 4096))
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.repeat_penalty = repeat_penalty
        self.top_k = top_k
        self.top_p = top_p
        self.seed = seed
        self.prompt_cache_mb = prompt_cache_mb
        self.verbose = verbose

    @property
    def name(self) -> str:
        return self.catalog_name or Path(self._path).stem

    @property
    def model_path(self) -> str:
        """Path to the GGUF file (assembles a catalog model on first access)."""
        if self._path is None:
            from .catalog import ensure_model

            self._path = str(ensure_model(self.catalog_name))
        return self._path

    def _model(self) -> tuple[Any, threading.Lock]:
        load_kwargs = {
            "n_threads": self.n_threads or os.cpu_count() or 1,
            "n_batch": self.n_batch,
            "seed": self.seed,
            "verbose": self.verbose,
        }
        llama, lock = _shared_llama(self.model_path, self.n_ctx, load_kwargs, self.lora_path, self.lora_scale,
                                    self.flash_attn)
        if self.prompt_cache_mb and getattr(llama, "cache", None) is None and _LLAMA_FACTORY is None:
            # Keeps KV states of several prompts (e.g. two alternating programs); llama.cpp already
            # reuses the prefix shared with the previous call without it.
            llama.set_cache(_import_llama_cpp().LlamaRAMCache(capacity_bytes=self.prompt_cache_mb << 20))
        return llama, lock

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loaded on first access)."""
        return self._model()[0]

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens the model reads for chat `messages` under its own chat template, as a request would send them
        (counted without decoding; what one request's prompt costs, cache hit or not)."""
        llama = self.llama
        rendered = self._chat_formatter(llama)(
            messages=[{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages])
        return len(llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True))

    @functools.cache  # noqa: B019 (one formatter per engine and model; engines live as long as their LM)
    def _chat_formatter(self, llama: Any) -> Any:
        """The formatter Llama.__init__ builds from the GGUF's chat template when no chat_format is given."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        text = lambda token: llama.detokenize([token], special=True).decode("utf-8") if token != -1 else ""  # noqa: E731
        return Jinja2ChatFormatter(template=llama.metadata["tokenizer.chat_template"],
                                   eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()))

    def _messages(self, request) -> list[dict[str, str]]:
        messages = []
        if request.system is not None:
            messages.append({"role": "system", "content": _text(request.system)})
        for m in request.messages:
            role = m.role if m.role in ("system", "user", "assistant") else "user"
            messages.append({"role": role, "content": m.text or ""})
        return messages

    def completion_kwargs(self, request) -> dict[str, Any]:
        """Translate a DSPy request's config into ``create_chat_completion`` keyword arguments."""
        cfg = request.config
        temperature = 0.0 if cfg.temperature is None else float(cfg.temperature)
        kwargs: dict[str, Any] = {
            "temperature": temperature,
            "top_k": self.top_k if cfg.top_k is None else cfg.top_k,
            "top_p": self.top_p if cfg.top_p is None else cfg.top_p,
            "repeat_penalty": self.repeat_penalty,
            "max_tokens": cfg.max_tokens,
            "seed": self.seed if cfg.seed is None else cfg.seed,
        }
        if cfg.stop:
            kwargs["stop"] = [cfg.stop] if isinstance(cfg.stop, str) else list(cfg.stop)
        if cfg.frequency_penalty is not None:
            kwargs["frequency_penalty"] = cfg.frequency_penalty
        if cfg.presence_penalty is not None:
            kwargs["presence_penalty"] = cfg.presence_penalty
        rf = to_llama_response_format(cfg.response_format)
        if rf is not None:
            kwargs["response_format"] = rf
        return kwargs

    def complete(self, request) -> Response:
        """Run one chat completion under the model lock (two when a free JSON reply must be redone)."""
        validate_request(request)
        messages = self._messages(request)
        kwargs = self.completion_kwargs(request)
        schema_format = kwargs.get("response_format")
        attempts = [kwargs]
        if schema_format is not None and self.grammar != "always":
            free = {k: v for k, v in kwargs.items() if k != "response_format"}
            attempts = [free, kwargs] if self.grammar == "on_failure" else [free]
        llama, lock = self._model()
        tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        with lock:
            for number, attempt in enumerate(attempts):
                out = llama.create_chat_completion(messages=messages, **attempt)
                self.stats["grammar" if "response_format" in attempt else "free"] += 1
                for key in tokens:
                    tokens[key] += (out.get("usage") or {}).get(key) or 0
                choice = out["choices"][0]
                text = (choice.get("message") or {}).get("content") or ""
                last = number == len(attempts) - 1
                if last or (choice.get("finish_reason") != "length"
                            and conforms(text, (schema_format or {}).get("schema"))):
                    break
                self.stats["fallbacks"] += 1
        finish = choice.get("finish_reason") or "stop"
        if finish not in ("stop", "length", "tool_call", "content_filter", "error"):
            finish = "stop"
        return Response(
            id=out.get("id"),
            model=self.name,
            message=Message.assistant((TextPart(text),)),
            finish_reason=finish,
            usage=Usage(input_tokens=tokens["prompt_tokens"], output_tokens=tokens["completion_tokens"],
                        total_tokens=tokens["total_tokens"]),
        )

    def stream(self, request):
        """Non-incremental stream: one complete response as events."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release per engine; the shared model stays loaded (see ``clear_model_cache``)."""

    def dump_state(self) -> dict[str, Any]:
        """JSON-serialisable settings (model name or path, sampling, context); no secrets."""
        return {
            "model": self.catalog_name or self._path,
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "n_batch": self.n_batch,
            "repeat_penalty": self.repeat_penalty,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "prompt_cache_mb": self.prompt_cache_mb,
            "grammar": self.grammar,
            "lora_path": self.lora_path,
            "lora_scale": self.lora_scale,
            **({"flash_attn": True} if self.flash_attn else {}),  # absent when off: older keys stay valid
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        """Rebuild an engine from ``dump_state()`` output (model loads lazily)."""
        import inspect

        state = dict(state)
        model = state.pop("model")
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "model"}
        return cls(model, **{k: v for k, v in state.items() if k in known})

    def __repr__(self) -> str:
        lora = f", lora_path={self.lora_path!r}" if self.lora_path else ""
        return f"LlamaCppEngine({self.name!r}, n_ctx={self.n_ctx}{lora})"
