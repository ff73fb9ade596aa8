"""The `Workers.setup` of tests/test_workers.py: the simulated world, its target slowed and its calls logged.

Every engine call is logged to `log` ("start"/"end" lines with the role and a digest of the request,
tests/kill_child.LoggedEngine). A worker started with CD_DSPY_TEST_HANG=N and CD_DSPY_TEST_MARKER=PATH
writes PATH at its N-th call and sleeps inside it, so the test can SIGKILL it mid-trial.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dspy
from kill_child import LoggedEngine

from cd_dspy.testing.simulated import SimulatedTarget, answer_match


class BrokenEngine:
    """The simulated target during an outage (CD_DSPY_TEST_BROKEN=1): every call raises. Keyed as the target."""

    model = "simulated-target"

    def __init__(self, inner: SimulatedTarget):
        self.inner = inner

    def complete(self, request):
        raise ConnectionError("simulated outage of the target's API")

    def stream(self, request):
        return self.complete(request)

    def close(self) -> None:
        pass

    def dump_state(self) -> dict:
        return self.inner.dump_state()

    def __deepcopy__(self, memo):
        return self


def build(latency: float = 0.0, log: str | None = None):
    """(program, metric, target LM) as the compile in the test has them (same keys: latency changes no answer)."""
    engine = SimulatedTarget(latency)
    if os.environ.get("CD_DSPY_TEST_BROKEN"):
        engine = BrokenEngine(engine)
    if log:
        hang = ("collect", int(os.environ["CD_DSPY_TEST_HANG"])) if os.environ.get("CD_DSPY_TEST_HANG") else None
        marker = Path(os.environ["CD_DSPY_TEST_MARKER"]) if hang else None
        state = {"lock": threading.Lock(), "teacher": 0, "collect": 0, "select": 0}  # a worker calls no teacher
        engine = LoggedEngine(engine, "target", Path(log), state, hang, marker)
    return dspy.ChainOfThought("question -> answer: float"), answer_match, dspy.LM("simulated/target", engine=engine,
                                                                                    cache=False)
