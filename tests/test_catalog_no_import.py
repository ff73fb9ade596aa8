"""The model-part packages are data: the catalog finds their files through importlib.metadata, never imports
them, and pyproject.toml's [local] extra pins exactly the versions whose bytes the catalog's sha256 describes."""

from __future__ import annotations

import builtins
import hashlib
import importlib
import re
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
from fake_part_dists import IMPORT_LOG, make_part_dist

from cd_dspy.lms import catalog
from cd_dspy.lms.catalog import CATALOG, ModelNotInstalledError, ModelSpec, ensure_model, list_models

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = [b"gguf-head" * 300, b"tail" * 700]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site dir on sys.path, the cache in tmp_path, and any import of a fake part module failing."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CD_DSPY_CACHE", str(tmp_path / "cache"))
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def guard(name: str) -> None:
        if name.split(".")[0].startswith("cdfake_"):
            raise AssertionError(f"cd-dspy imported the part package {name}")

    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: guard(name) or real_import(name, *a, **k))
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: guard(name) or real_import_module(name, *a))
    yield site
    assert not (site / IMPORT_LOG).exists(), "a part package's code ran"
    assert not [m for m in sys.modules if m.startswith("cdfake_")]


def _spec(name: str, packages: tuple[str, ...], whole: bytes, version: str = "1.0", sha: str | None = None):
    return ModelSpec(name, "test", "target", packages, len(whole), sha or hashlib.sha256(whole).hexdigest(),
                     version=version)


def test_parts_are_located_without_importing_them(site, monkeypatch):
    pkgs = (f"cdfake-{site.parent.name}-a", f"cdfake-{site.parent.name}-b")
    for pkg, data in zip(pkgs, CHUNKS, strict=True):
        make_part_dist(site, pkg, data)
    monkeypatch.setitem(CATALOG, "fake", _spec("fake", pkgs, b"".join(CHUNKS)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pinned versions installed: no warning
        path = ensure_model("fake")
    assert path.read_bytes() == b"".join(CHUNKS)
    assert next(r for r in list_models() if r["name"] == "fake")["installed"] is True


def test_missing_package_names_it_and_the_pinned_fix(site, monkeypatch):
    pkgs = (f"cdfake-{site.parent.name}-here", f"cdfake-{site.parent.name}-gone")
    make_part_dist(site, pkgs[0], CHUNKS[0])
    monkeypatch.setitem(CATALOG, "fake", _spec("fake", pkgs, b"".join(CHUNKS), version="2.5"))
    with pytest.raises(ModelNotInstalledError) as err:
        ensure_model("fake")
    msg = str(err.value)
    assert pkgs[1] in msg and f"pip install {pkgs[1]}==2.5" in msg and f"{pkgs[0]}==" not in msg
    assert next(r for r in list_models() if r["name"] == "fake")["installed"] is False


def test_distribution_without_its_part_file_is_not_installed(site, monkeypatch):
    pkg = f"cdfake-{site.parent.name}-empty"
    make_part_dist(site, pkg, None)  # RECORD lists only __init__.py and metadata
    monkeypatch.setitem(CATALOG, "fake", _spec("fake", (pkg,), CHUNKS[0]))
    with pytest.raises(ModelNotInstalledError, match=rf"{pkg} 1\.0 does not hold one model part.*"
                                                     rf"pip install --force-reinstall {pkg}==1\.0"):
        ensure_model("fake")


def test_off_pin_version_warns_and_the_hash_decides(site, monkeypatch):
    pkg = f"cdfake-{site.parent.name}-new"
    make_part_dist(site, pkg, CHUNKS[0], version="1.1")
    monkeypatch.setitem(CATALOG, "same", _spec("same", (pkg,), CHUNKS[0]))
    with pytest.warns(UserWarning, match=rf"{pkg} 1\.1 differ\(s\) from the pinned version 1\.0"):
        assert ensure_model("same").read_bytes() == CHUNKS[0]  # same bytes: usable
    monkeypatch.setitem(CATALOG, "changed", _spec("changed", (pkg,), CHUNKS[0], sha="e" * 64))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"corrupt.*differ\(s\) from the pinned"):
        ensure_model("changed")


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for req in reqs:
        name, rest = re.fullmatch(r"\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(.*)", req).groups()
        out.setdefault(name.lower(), rest.strip())
    return out


def test_local_extra_pins_exactly_the_catalog_packages():
    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    parts = {name: rest for name, rest in _requirement_names(local).items() if name != "llama-cpp-python"}
    expected = {pkg: f"=={spec.version}" for spec in CATALOG.values() for pkg in spec.packages}
    assert all(spec.version for spec in CATALOG.values())
    assert parts == expected


def test_installed_parts_add_up_to_the_catalog_size():
    """With the real [local] packages installed: their located parts (no import) sum to each model's size."""
    installed = [spec for spec in CATALOG.values() if not catalog._missing_packages(spec)]
    if not installed:
        pytest.skip("the [local] extra is not installed")
    for spec in installed:
        paths = catalog._part_paths(spec)
        assert sum(p.stat().st_size for p in paths) == spec.size, spec.name
        assert not [m for m in spec.modules if m in sys.modules]
