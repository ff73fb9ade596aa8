"""A compile on the simulated world, run as a subprocess by tests/test_kill_resume.py.

Every engine call is logged to `--log` ("start"/"end" lines with the role and a digest of the
request) before and after it runs. With `--hang PHASE:N` the N-th call of that phase writes
`--marker` and sleeps, so the parent can SIGKILL the process at a known point:

    collect:N  the N-th target call before any teacher call
    induce:N   the N-th teacher call
    select:N   the N-th target call after the teacher has been called
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import dspy

from cd_dspy import ConceptDistillation
from cd_dspy.testing.faults import request_key
from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits

N_TRAIN, N_VAL, NUM_TRIALS = 12, 40, 6


class LoggedEngine:
    """Logs each call of `inner` to a shared file; may hang at one call."""

    def __init__(self, inner, role: str, log: Path, state: dict, hang: tuple[str, int] | None, marker: Path | None):
        self.inner, self.role, self.log, self.state, self.hang, self.marker = inner, role, log, state, hang, marker
        self.model = inner.model

    def _write(self, line: str) -> None:
        with self.state["lock"], open(self.log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def complete(self, request):
        key = request_key(request)
        with self.state["lock"]:
            if self.role == "teacher":
                self.state["teacher"] += 1
                phase, n = "induce", self.state["teacher"]
            else:
                phase = "select" if self.state["teacher"] else "collect"
                self.state[phase] += 1
                n = self.state[phase]
        self._write(f"start {self.role} {key}")
        if self.hang == (phase, n):
            self.marker.write_text(f"{phase}:{n} {key}")
            time.sleep(600)  # the parent kills us here
        response = self.inner.complete(request)
        self._write(f"end {self.role} {key}")
        return response

    def stream(self, request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass

    def __deepcopy__(self, memo):
        return self


def logged_calls(log: Path, event: str, role: str | None = None) -> list[str]:
    """The request keys of the `event` ("start" or "end") lines a `LoggedEngine` wrote to `log` (of `role`)."""
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return [key for ev, r, key in rows if ev == event and (role is None or r == role)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hang")
    parser.add_argument("--marker")
    args = parser.parse_args()
    hang = None
    if args.hang:
        phase, n = args.hang.split(":")
        hang = (phase, int(n))
    state = {"lock": threading.Lock(), "teacher": 0, "collect": 0, "select": 0}
    log, marker = Path(args.log), Path(args.marker) if args.marker else None
    target = dspy.LM("simulated/target", engine=LoggedEngine(SimulatedTarget(), "target", log, state, hang, marker),
                     cache=False)
    teacher = dspy.LM("simulated/teacher", engine=LoggedEngine(SimulatedTeacher(), "teacher", log, state, hang,
                                                               marker), cache=False)
    trainset, valset = simulated_splits(N_TRAIN, N_VAL, seed=3)
    cd = ConceptDistillation(metric=answer_match, teacher_lm=teacher, target_lm=target, num_trials=NUM_TRIALS,
                             seed=0, run_dir=args.run_dir, progress=False, carrier="rules")
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=trainset, valset=valset)
    Path(args.out).write_text(json.dumps({**cd.result.to_dict(), "pid": os.getpid()}, default=str))


if __name__ == "__main__":
    main()
