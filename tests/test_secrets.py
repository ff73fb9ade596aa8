"""API keys never leak: not into run_dir artifacts, the result, saved programs, or logs."""

from __future__ import annotations

import json
import logging

import dspy

from cd_dspy import ConceptDistillation
from cd_dspy.simulated import SimulatedTarget, SimulatedTeacher

KEY = "sk-test-FAKE123"


class KeyedTarget(SimulatedTarget):
    def __init__(self):
        super().__init__()
        self.api_key = KEY


class KeyedTeacher(SimulatedTeacher):
    def __init__(self):
        super().__init__()
        self.api_key = KEY


def assert_no_key(where: str, text: str | bytes) -> None:
    needle = KEY.encode() if isinstance(text, bytes) else KEY
    assert needle not in text, f"the API key leaked into {where}"


def test_api_key_never_written_or_logged(sim, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # LMs built the way a user would, with the key passed explicitly (they are never called for real)
    real_teacher = dspy.LM("openai/gpt-4o-mini", api_key=KEY)
    # DSPy refuses api_key= next to a custom engine (the engine owns its connection): the engines hold it
    target = dspy.LM("simulated/target", engine=KeyedTarget(), cache=False)
    teacher = dspy.LM("simulated/teacher", engine=KeyedTeacher(), cache=False)
    assert KEY in repr(vars(real_teacher))  # the key is in there
    program = dspy.ChainOfThought("question -> answer: float")
    run = tmp_path / "run"

    with caplog.at_level(logging.DEBUG), dspy.context(lm=real_teacher):  # a configured default LM, never called
        estimate = ConceptDistillation(metric=sim.metric, teacher_lm=real_teacher, target_lm=target,
                                       num_trials=6).dry_run(program, sim.trainset[:8], sim.valset)
        cd = ConceptDistillation(metric=sim.metric, teacher_lm=teacher, target_lm=target, num_trials=6,
                                 run_dir=run, progress=True)
        compiled = cd.compile(program, trainset=sim.trainset[:8], valset=sim.valset)
    assert cd.result.improved  # the compile really ran

    assert_no_key("the dry-run estimate", json.dumps(estimate, default=str))
    assert_no_key("result.to_dict()", json.dumps(cd.result.to_dict(), default=str))
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"program.json", "result.json", "study.db", "evaluations.jsonl"} <= {p.name for p in files}
    for path in files:
        assert_no_key(str(path), path.read_bytes())
    saved = tmp_path / "compiled.json"
    compiled.save(str(saved))
    assert_no_key("a saved program", saved.read_bytes())
    assert "simulated/target" in saved.read_text()  # the LM state was saved, without its key
    assert_no_key("the logs", caplog.text)
    out = capsys.readouterr()
    assert_no_key("stdout/stderr", out.out + out.err)
    assert_no_key("the LM history", json.dumps(target.history, default=str))
