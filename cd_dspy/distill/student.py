"""The student as a Hugging Face causal LM: a local GGUF (catalog name or path) loaded through transformers'
`gguf_file=` (weights dequantized to float32, the tokenizer rebuilt from the GGUF's vocabulary), or a Hugging
Face model directory."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cd_dspy.distill.train import require_training_stack

logger = logging.getLogger(__name__)


def model_file(name_or_path: str | os.PathLike) -> Path:
    """The GGUF file of a catalog model (assembled on first use) or the given .gguf path."""
    from cd_dspy.lms.catalog import CATALOG, ensure_model

    name = str(name_or_path)
    if name in CATALOG:
        return ensure_model(name)
    path = Path(name).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise FileNotFoundError(f"{name!r} is neither a catalog model ({', '.join(sorted(CATALOG))}) nor an existing "
                                ".gguf file.")
    return path


def tokenizer_cache() -> Path:
    """Where tokenizers rebuilt from GGUF files are kept: next to the model cache (`$CD_DSPY_CACHE/..`)."""
    from cd_dspy.lms.catalog import cache_dir

    return cache_dir().parent / "tokenizers"


def _header_digest(path: Path, limit: int = 32 << 20) -> str:
    """A digest of the file's size and first 32 MiB (a GGUF's metadata, its vocabulary included, comes first)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(limit))
    return digest.hexdigest()[:16]


def gguf_tokenizer(path: str | os.PathLike) -> Any:
    """The transformers tokenizer of a GGUF file, rebuilt once (about 10 s for Qwen's 151k tokens) and cached,
    keyed by the file's content."""
    require_training_stack()
    from transformers import AutoTokenizer

    path = Path(path).resolve()
    cached = tokenizer_cache() / f"{path.stem}-{_header_digest(path)}"
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(cached)
    except OSError:  # another process cached it first
        logger.debug("tokenizer cache %s already written", cached)
    return tokenizer


def load_student(name_or_path: str | os.PathLike) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 on the CPU: a catalog name or .gguf path (through `gguf_file=`), or a
    Hugging Face model directory."""
    require_training_stack()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json).")
        return (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32),
                AutoTokenizer.from_pretrained(str(path)))
    gguf = model_file(name_or_path)
    with _one_parse():
        tokenizer = gguf_tokenizer(gguf)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


@contextlib.contextmanager
def _one_parse() -> Iterator[None]:
    """transformers parses a GGUF's metadata once for the config and again for the weights (10-20 s each for
    a 151k-token vocabulary, in pure Python); within this block each file is parsed once (the reader is
    read-only, so sharing it is safe)."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def merge_adapter(trainer: Any, directory: str | os.PathLike) -> Path:
    """Fold the trained LoRA into the base weights and save a Hugging Face model directory (the trainer's
    model is merged in place: train no further with it). Convert it with `convert.convert_hf`."""
    directory = Path(directory)
    merged = trainer.model.merge_and_unload()
    if not getattr(merged.config, "architectures", None):
        merged.config.architectures = [type(merged).__name__]
    merged.save_pretrained(str(directory))
    trainer.tokenizer.save_pretrained(str(directory))
    return directory
