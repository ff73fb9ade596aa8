"""SIGKILL a compile in each phase (collect, induce, select), resume it, and check nothing is paid twice.

The child (tests/kill_child.py) logs every engine call ("start"/"end" + role + request digest) and
hangs inside one chosen call, so the kill lands at a known point: that call is in flight, every
call before it has finished. What is provable, and checked:

* after the kill every JSON artifact in run_dir parses and every JSONL line is complete;
* the rerun sends no request that finished before the kill (only the interrupted one is redone);
* killed in collect: every finished target call was logged in collect.jsonl; killed in induce: the
  rerun's teacher calls = the mistakes not yet explained + the consolidation call; killed in select:
  the rerun calls no teacher and keeps every trial that completed;
* across both runs the teacher is called exactly as often as in an uninterrupted run, and the final
  selected rules and best score equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kill_child import logged_calls

CHILD = Path(__file__).with_name("kill_child.py")
# select:75 comes after 30 verification calls and two trials of 20 search examples: inside the third trial
KILL_POINTS = {"collect": "collect:5", "induce": "induce:3", "select": "select:75"}


def start(tmp: Path, name: str, run_dir: Path, hang: str | None = None) -> tuple[subprocess.Popen, dict]:
    paths = {"log": tmp / f"{name}.log", "out": tmp / f"{name}.json", "marker": tmp / f"{name}.marker",
             "stderr": tmp / f"{name}.stderr"}
    cmd = [sys.executable, str(CHILD), "--run-dir", str(run_dir), "--log", str(paths["log"]),
           "--out", str(paths["out"])]
    if hang:
        cmd += ["--hang", hang, "--marker", str(paths["marker"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(paths["stderr"], "w"))  # noqa: SIM115
    return proc, paths


def finish(proc: subprocess.Popen, paths: dict) -> dict:
    assert proc.wait(timeout=120) == 0, paths["stderr"].read_text()[-3000:]
    return json.loads(paths["out"].read_text())


def kill_at_marker(proc: subprocess.Popen, paths: dict) -> None:
    deadline = time.monotonic() + 60
    while not paths["marker"].exists():
        assert proc.poll() is None, f"child ended before its kill point: {paths['stderr'].read_text()[-3000:]}"
        assert time.monotonic() < deadline, "child never reached its kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def check_artifacts_parse(run_dir: Path) -> list[str]:
    names = []
    for path in sorted(run_dir.iterdir()):
        if path.suffix == ".json":
            json.loads(path.read_text())  # atomic writes: never half a file
            names.append(path.name)
        elif path.suffix == ".jsonl":
            text = path.read_text()
            assert text.endswith("\n") or not text, f"{path.name} ends in a torn line"
            for line in text.splitlines():
                json.loads(line)
            names.append(path.name)
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted reference and, per phase, a killed run and its resumption (all in parallel)."""
    tmp = tmp_path_factory.mktemp("kill")
    reference = start(tmp, "reference", tmp / "run-reference")
    killed = {phase: start(tmp, f"{phase}-1", tmp / f"run-{phase}", hang) for phase, hang in KILL_POINTS.items()}
    out = {"reference": finish(*reference), "reference_log": reference[1]["log"], "phases": {}}
    for phase, (proc, paths) in killed.items():
        kill_at_marker(proc, paths)
        run_dir = tmp / f"run-{phase}"
        out["phases"][phase] = {
            "paths1": paths, "run_dir": run_dir, "artifacts": check_artifacts_parse(run_dir),
            "explained_at_kill": sum(1 for _ in open(run_dir / "explanations.jsonl"))
            if (run_dir / "explanations.jsonl").exists() else 0,
            "solved_at_kill": sum(1 for _ in open(run_dir / "solutions.jsonl"))
            if (run_dir / "solutions.jsonl").exists() else 0,
            "collected_at_kill": sum(len(json.loads(line)["indices"]) for line in open(run_dir / "collect.jsonl"))
            if (run_dir / "collect.jsonl").exists() else 0,
            "trials_at_kill": json.loads((run_dir / "progress.json").read_text())["trials"]
            if (run_dir / "progress.json").exists() else [],
        }
    resumed = {phase: start(tmp, f"{phase}-2", tmp / f"run-{phase}") for phase in KILL_POINTS}
    for phase, (proc, paths) in resumed.items():
        out["phases"][phase]["result"] = finish(proc, paths)
        out["phases"][phase]["paths2"] = paths
    return out


def test_reference_run_pays_each_request_once(runs):
    log = runs["reference_log"]
    assert logged_calls(log, "start") == logged_calls(log, "end")  # nothing in flight at the end
    assert not [k for k, n in Counter(logged_calls(log, "start")).items() if n > 1]
    ref = runs["reference"]
    assert ref["improved"] and ref["selected_rule_ids"]


@pytest.mark.parametrize("phase", list(KILL_POINTS))
def test_kill_and_resume(runs, phase):
    data, ref = runs["phases"][phase], runs["reference"]
    log1, log2 = data["paths1"]["log"], data["paths2"]["log"]
    finished1, started1, started2 = logged_calls(log1, "end"), logged_calls(log1, "start"), logged_calls(log2, "start")
    in_flight = Counter(started1) - Counter(finished1)
    assert sum(in_flight.values()) == 1  # the kill landed inside exactly one call
    assert {"fingerprint.json"} <= set(data["artifacts"])

    # no request that finished before the kill is sent again; none is sent twice in either run
    assert not set(finished1) & set(started2)
    assert len(set(started1)) == len(started1) and len(set(started2)) == len(started2)

    teacher1, teacher2 = logged_calls(log1, "end", "teacher"), logged_calls(log2, "start", "teacher")
    ref_log = runs["reference_log"]
    if phase == "collect":
        assert not teacher1
        assert data["collected_at_kill"] == len(finished1) == 4  # each finished call was checkpointed
        assert set(in_flight) <= set(started2)  # the interrupted call is redone
    if phase == "induce":
        assert "mistakes.json" in data["artifacts"] and "rules.json" not in data["artifacts"]
        used = ref["n_mistakes_used"]  # the teacher solves each first: the kill lands in the third solution
        assert data["solved_at_kill"] == len(teacher1) == 2 and data["explained_at_kill"] == 0
        assert len(teacher2) == (used - 2) + used + 1  # the other solutions, every explanation, one consolidation
        assert set(in_flight) <= set(started2)
    if phase == "select":
        assert {"mistakes.json", "rules.json"} <= set(data["artifacts"])
        assert not teacher2  # induce is reused whole
        done = [t for t in data["trials_at_kill"] if t["state"] == "complete"]
        assert done  # some trials completed before the kill...
        resumed = {t["number"]: t for t in data["result"]["trials"]}
        for trial in done:  # ...and the resumed study kept them
            assert resumed[trial["number"]]["state"] == "complete"
            assert resumed[trial["number"]]["rule_ids"] == trial["rule_ids"]
    if phase in ("collect", "induce"):  # the rest of the run is deterministic: the same calls as the reference
        assert sorted(set(finished1) | set(started2)) == sorted(logged_calls(ref_log, "start"))
    # the teacher did exactly the reference's work across both runs
    assert len(teacher1) + len(teacher2) == len(logged_calls(ref_log, "start", "teacher"))

    result = data["result"]
    assert result["selected_rule_ids"] == ref["selected_rule_ids"]
    assert result["best_score"] == ref["best_score"]
    assert result["baseline_score"] == ref["baseline_score"]
    print(f"\n[kill-resume] {phase}: killed after {len(finished1)} finished calls "
          f"({len(teacher1)} teacher), resumed with {len(started2)} calls ({len(teacher2)} teacher); "
          f"selected {result['selected_rule_ids']} best {result['best_score']}")


def test_a_program_key_holds_what_changes_answers_and_no_secret():
    """Records and phases are reused by key: max_tokens (a shorter cap truncates answers) is part of it, an API key
    or token never is."""
    import dspy

    from cd_dspy.core.keys import lm_state, program_key

    def bound(**kwargs):
        program = dspy.Predict("question -> answer")
        program.set_lm(dspy.LM("openai/x", cache=False, **kwargs))
        return program_key(program)

    assert bound(max_tokens=512) != bound(max_tokens=1024)
    assert bound(max_tokens=512, api_key="sk-1") == bound(max_tokens=512, api_key="sk-2")
    state = lm_state(dspy.LM("openai/x", api_key="sk-secret", hf_token="t", max_tokens=7))
    assert state["max_tokens"] == 7 and "sk-secret" not in str(state) and "hf_token" not in state
