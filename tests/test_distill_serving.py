"""Serving a tuned model without a model: the engine's LoRA setting and its cache keys (fake llama.cpp), and
finding and checking llama.cpp's conversion scripts (a fake sdist, a fake pip)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cd_dspy.distill import convert as convert_module
from cd_dspy.lms import llama_engine, local_lm

# ---------------------------------------------------------------- serving a LoRA through the engine

class LoadingLlama:
    instances: list = []

    def __init__(self, model_path, n_ctx, **kwargs):
        self.model_path, self.kwargs = model_path, kwargs
        LoadingLlama.instances.append(self)


def test_engine_serves_a_lora_under_its_own_cache_keys(monkeypatch, tmp_path):
    monkeypatch.setattr(llama_engine, "_LLAMA_FACTORY", LoadingLlama)
    llama_engine.clear_model_cache()
    model, adapter, other = tmp_path / "m.gguf", tmp_path / "a.gguf", tmp_path / "b.gguf"
    for path, content in ((model, b"GGUF"), (adapter, b"lora-a"), (other, b"lora-b")):
        path.write_bytes(content)
    base, tuned, tuned2 = (local_lm(str(model)), local_lm(str(model), lora_path=str(adapter)),
                           local_lm(str(model), lora_path=str(other)))
    assert base.model == "local/m" and tuned.model.startswith("local/m+lora-") and tuned.model != tuned2.model
    assert tuned.engine.dump_state()["lora_path"] == str(adapter)
    for lm in (base, tuned, tuned2, local_lm(str(model), lora_path=str(adapter))):
        lm.engine.llama  # noqa: B018 - loads the (fake) model
    assert len(LoadingLlama.instances) == 3  # one per (model, adapter); the same pair is shared
    assert "lora_path" not in LoadingLlama.instances[0].kwargs
    assert LoadingLlama.instances[1].kwargs["lora_path"] == str(adapter.resolve())
    with pytest.raises(FileNotFoundError, match="LoRA adapter not found"):
        local_lm(str(model), lora_path=str(tmp_path / "none.gguf"))
    llama_engine.clear_model_cache()


# ---------------------------------------------------------------- finding llama.cpp's conversion scripts

def _fake_sdist(path: Path, version: str = "9.9.9") -> Path:
    files = {"convert_hf_to_gguf.py": "", "convert_lora_to_gguf.py": "", "LICENSE": "MIT",
             "conversion/__init__.py": "", "gguf-py/gguf/__init__.py": "", "src/llama.cpp": "int main;"}
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(f"llama_cpp_python-{version}/vendor/llama.cpp/{name}")
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def test_conversion_scripts_come_from_a_configured_sdist(monkeypatch, tmp_path):
    monkeypatch.setenv("CD_DSPY_CACHE", str(tmp_path / "cache" / "models"))
    monkeypatch.setenv(convert_module.SOURCE_ENV, str(_fake_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz")))
    found = convert_module.scripts_dir()
    assert (found / "convert_lora_to_gguf.py").is_file() and (found / "gguf-py" / "gguf").is_dir()
    assert not (found / "src").exists()  # only the scripts, their packages and the license
    monkeypatch.setenv(convert_module.SOURCE_ENV, str(tmp_path))
    with pytest.raises(convert_module.ConversionUnavailableError, match="holds no llama.cpp conversion scripts"):
        convert_module.scripts_dir()


def test_conversion_scripts_are_downloaded_or_the_error_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CD_DSPY_CACHE", str(tmp_path / "cache" / "models"))
    monkeypatch.delenv(convert_module.SOURCE_ENV, raising=False)
    monkeypatch.setattr(convert_module, "llama_cpp_version", lambda: "9.9.9")

    def pip_download(command, **kwargs):
        _fake_sdist(Path(command[command.index("-d") + 1]) / "llama_cpp_python-9.9.9.tar.gz")
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(convert_module.subprocess, "run", pip_download)
    assert convert_module.scripts_dir() == tmp_path / "cache" / "llama.cpp" / "9.9.9"
    monkeypatch.setenv("CD_DSPY_CACHE", str(tmp_path / "empty" / "models"))
    monkeypatch.setattr(convert_module.subprocess, "run",
                        lambda command, **kw: type("Done", (), {"returncode": 1, "stdout": "", "stderr": "offline"})())
    with pytest.raises(convert_module.ConversionUnavailableError) as err:
        convert_module.scripts_dir()
    assert "offline" in str(err.value) and "pip download llama-cpp-python==9.9.9" in str(err.value)
    assert convert_module.SOURCE_ENV in str(err.value)


def test_conversion_inputs_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="LoraTrainer.save"):
        convert_module.convert_lora(tmp_path, tmp_path / "a.gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_module.convert_hf(tmp_path, tmp_path / "m.gguf")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="outtype must be one of"):
        convert_module.convert_hf(tmp_path, tmp_path / "m.gguf", outtype="q2")
