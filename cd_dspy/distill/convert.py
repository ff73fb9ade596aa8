"""Conversion to llama.cpp: a peft LoRA adapter to a GGUF LoRA (`convert_lora`), or a Hugging Face model
directory (e.g. a merged model) to a GGUF model (`convert_hf`), with the conversion scripts that ship in the
llama.cpp sources vendored by llama-cpp-python.

The scripts are not part of the llama-cpp-python wheel, so they are found, in this order:
1. `$CD_DSPY_LLAMA_CPP_SRC`: a llama.cpp checkout, an unpacked llama-cpp-python sdist, or its .tar.gz;
2. the cache `~/.cache/cd-dspy/llama.cpp/<version>/` (or `$CD_DSPY_CACHE/../llama.cpp/<version>/`);
3. `pip download llama-cpp-python==<installed version> --no-binary :all: --no-deps` (76 MB, the same source
   pip builds the installed package from), of which only the scripts, their `conversion/` and `gguf-py/`
   packages and the MIT license are extracted into that cache.
They match the installed llama.cpp, so what they write is what the engine loads.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_ENV = "CD_DSPY_LLAMA_CPP_SRC"
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
NEEDED = (*SCRIPTS, "LICENSE", "conversion/", "gguf-py/")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class ConversionUnavailableError(RuntimeError):
    """The llama.cpp conversion scripts cannot be found or fetched; the message names the fix."""


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ConversionUnavailableError('llama-cpp-python is not installed; fix: pip install "cd-dspy[local]"') \
            from None


def scripts_cache() -> Path:
    from cd_dspy.lms.catalog import cache_dir

    return cache_dir().parent / "llama.cpp"


def _complete(directory: Path) -> bool:
    return all((directory / name).exists() for name in NEEDED)


def _fix(version: str) -> str:
    return (f"fix: set {SOURCE_ENV} to a llama.cpp checkout or the llama-cpp-python {version} source "
            f"(pip download llama-cpp-python=={version} --no-binary :all: --no-deps -d DIR; then "
            f"{SOURCE_ENV}=DIR/llama_cpp_python-{version}.tar.gz)")


def scripts_dir() -> Path:
    """A directory holding llama.cpp's conversion scripts (see the module docstring for where from)."""
    version = llama_cpp_version()
    configured = os.environ.get(SOURCE_ENV)
    if configured:
        source = Path(configured).expanduser()
        if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
            return extract_scripts(source, scripts_cache() / f"from-{source.stem}")
        for candidate in (source, source / "vendor" / "llama.cpp"):
            if _complete(candidate):
                return candidate
        raise ConversionUnavailableError(f"{SOURCE_ENV}={configured} holds no llama.cpp conversion scripts "
                                         f"({', '.join(NEEDED)}); {_fix(version)}")
    cached = scripts_cache() / version
    if _complete(cached):
        return cached
    with tempfile.TemporaryDirectory(prefix="cd-dspy-sdist-") as tmp:
        command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary", ":all:",
                   "--no-deps", "--quiet", "-d", tmp]
        logger.info("Distill: fetching the llama.cpp conversion scripts: %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise ConversionUnavailableError(f"could not download the llama-cpp-python {version} source "
                                             f"({(done.stderr or done.stdout).strip()[-400:]}); {_fix(version)}")
        return extract_scripts(sdists[0], cached)


def extract_scripts(sdist: Path, destination: Path) -> Path:
    """Extract the conversion scripts, their packages and the license from a llama-cpp-python sdist."""
    if _complete(destination):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination.parent))
    try:
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                _, marker, rest = member.name.partition("/vendor/llama.cpp/")
                if marker and any(rest == n or (n.endswith("/") and rest.startswith(n)) for n in NEEDED):
                    member.name = rest
                    members.append(member)
            archive.extractall(staging, members=members, filter="data")
        if not _complete(staging):
            raise ConversionUnavailableError(f"{sdist} does not hold llama.cpp's conversion scripts "
                                             f"({', '.join(NEEDED)}); {_fix(llama_cpp_version())}")
        try:
            staging.replace(destination)
        except OSError:  # extracted meanwhile by another process
            if not _complete(destination):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _run(script: str, args: list[str], output: Path) -> Path:
    directory = scripts_dir()
    command = [sys.executable, str(directory / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=str(directory))
    if done.returncode != 0 or not output.is_file():
        raise RuntimeError(f"{script} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    return output


def _outtype(outtype: str) -> str:
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}.")
    return outtype


def convert_lora(adapter_dir: str | os.PathLike, output: str | os.PathLike, *,
                 base_dir: str | os.PathLike | None = None, outtype: str = "f32") -> Path:
    """A peft adapter directory -> a llama.cpp LoRA GGUF. `base_dir` holds the base model's config (and
    tokenizer), by default `adapter_dir/base` as `LoraTrainer.save` writes it; no base weights are needed."""
    adapter_dir = Path(adapter_dir)
    base = Path(base_dir) if base_dir else adapter_dir / "base"
    for needed in (adapter_dir / "adapter_config.json", base / "config.json"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: save the adapter with LoraTrainer.save (it writes both).")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return _run("convert_lora_to_gguf.py", [str(adapter_dir.resolve()), "--base", str(base.resolve()), "--outfile",
                                            str(output.resolve()), "--outtype", _outtype(outtype)], output)


def convert_hf(model_dir: str | os.PathLike, output: str | os.PathLike, *, outtype: str = "f16") -> Path:
    """A Hugging Face model directory (weights, config, tokenizer) -> a GGUF model llama.cpp serves."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json).")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return _run("convert_hf_to_gguf.py", [str(model_dir.resolve()), "--outfile", str(output.resolve()), "--outtype",
                                          _outtype(outtype)], output)
