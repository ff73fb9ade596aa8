"""API keys never leak: not into run_dir artifacts, the result, saved programs, or logs."""

from __future__ import annotations

import json
import logging

import dspy

from cd_dspy import ConceptDistillation
from cd_dspy.core.keys import lm_state
from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher

KEY = "sk-SECRET-123"
TOKEN = "hf-SECRET-456"


class KeyedTarget(SimulatedTarget):
    """A custom engine owns its connection: it holds the credentials (and never dumps them)."""

    def __init__(self):
        super().__init__()
        self.api_key, self.hf_token = KEY, TOKEN


class KeyedTeacher(SimulatedTeacher):
    def __init__(self):
        super().__init__()
        self.api_key, self.hf_token = KEY, TOKEN


def keyed_lm(model: str, engine) -> dspy.LM:
    """A dspy.LM whose kwargs hold the API key, as `dspy.LM("openai/...", api_key=...)` does, answered offline.

    DSPy refuses `api_key=` next to a custom engine at construction, so it goes into `kwargs` after it: that is
    where a provider LM keeps it, and what `lm.dump_state()`, `keys.lm_state` and the logs could read. (An
    `hf_token` kwarg cannot ride along: lm15 refuses to send a key it does not know, so the engine holds it.)"""
    lm = dspy.LM(model, engine=engine, cache=False)
    lm.kwargs["api_key"] = KEY
    return lm


def assert_no_secret(where: str, text: str | bytes) -> None:
    for secret in (KEY, TOKEN):
        needle = secret.encode() if isinstance(text, bytes) else secret
        assert needle not in text, f"a secret ({secret}) leaked into {where}"


def test_api_key_never_written_or_logged(sim, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    target_engine, teacher_engine = KeyedTarget(), KeyedTeacher()
    target, teacher = keyed_lm("simulated/target", target_engine), keyed_lm("simulated/teacher", teacher_engine)
    real_teacher = dspy.LM("openai/gpt-4o-mini", api_key=KEY)  # a configured default LM, never called
    for lm in (target, teacher, real_teacher):
        assert KEY in repr(vars(lm))  # the key is in there, where DSPy keeps it
    program = dspy.ChainOfThought("question -> answer: float")
    run = tmp_path / "run"

    with caplog.at_level(logging.DEBUG), dspy.context(lm=real_teacher):
        estimate = ConceptDistillation(metric=sim.metric, teacher_lm=real_teacher, target_lm=target,
                                       num_trials=6).dry_run(program, sim.trainset[:8], sim.valset)
        cd = ConceptDistillation(metric=sim.metric, teacher_lm=teacher, target_lm=target, num_trials=6,
                                 run_dir=run, progress=True)
        compiled = cd.compile(program, trainset=sim.trainset[:8], valset=sim.valset)
        saved = run / "saved" / "compiled.json"  # inside the run dir: the walk below reads it back too
        saved.parent.mkdir()
        compiled.save(str(saved))
    assert cd.result.improved  # the compile really ran, on the keyed LMs
    assert target_engine.calls and teacher_engine.calls  # both keyed LMs answered calls
    assert "simulated/target" in saved.read_text()  # the LM state was saved, without its key

    assert_no_secret("keys.lm_state (what keys hash)", json.dumps([lm_state(target), lm_state(teacher)], default=str))
    assert_no_secret("the dry-run estimate", json.dumps(estimate, default=str))
    assert_no_secret("result.to_dict()", json.dumps(cd.result.to_dict(), default=str))
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"program.json", "result.json", "study.db", "evaluations.jsonl", "compiled.json"} <= {p.name for p in files}
    for path in files:
        assert_no_secret(str(path.relative_to(tmp_path)), path.read_bytes())
    assert caplog.records  # DEBUG logging was captured
    assert_no_secret("the logs", caplog.text)
    out = capsys.readouterr()
    assert_no_secret("stdout/stderr", out.out + out.err)
    assert_no_secret("the LM history", json.dumps(target.history + teacher.history, default=str))


def test_a_saved_program_holds_no_lm_secret(tmp_path):
    """DSPy's `LM.dump_state` drops `api_key` only: run_dir/program.json (written by `save_program`) drops every
    kwarg named like a secret, and the LM in use keeps them."""
    from cd_dspy.phases.integrate import load_program, save_program

    lm = dspy.LM("openai/gpt-4o-mini", api_key=KEY, hf_token=TOKEN, aws_secret_access_key=TOKEN, max_tokens=64)
    program = dspy.ChainOfThought("question -> answer: float")
    program.set_lm(lm)
    path = tmp_path / "program.json"
    save_program(program, path)
    assert_no_secret("a program saved by save_program", path.read_bytes())
    loaded = load_program(dspy.ChainOfThought("question -> answer: float"), path, allow_unsafe_lm_state=True)
    assert loaded.predict.lm.model == "openai/gpt-4o-mini" and loaded.predict.lm.kwargs["max_tokens"] == 64
    assert lm.kwargs["hf_token"] == TOKEN and program.predict.lm is lm  # the program and its LM are untouched
