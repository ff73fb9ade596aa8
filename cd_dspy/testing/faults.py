"""Fault injection for DSPy 3.4 engines: an unreliable LM, reproducibly.

`FaultyEngine(inner, rate=0.2, seed=0)` wraps any engine (`complete(request)`, `stream`, `close`)
and makes a seeded share of its calls fail the ways real providers fail:

    timeout      raises `dspy.lm15.TimeoutError`    (DSPy's LM layer retries it, `num_retries`)
    rate_limit   raises `dspy.lm15.RateLimitError`  (retried too, honouring `retry_after`)
    empty        returns a Response with no text     (the adapter cannot parse it)
    malformed    returns prose without the fields    (the adapter cannot parse it)
    exception    raises a plain RuntimeError         (an engine bug: DSPy does not retry it)
    refused      raises ConnectionRefusedError       (the server is down: a fatal failure, see failures.py)

Whether a call fails depends only on the seed, the request's content and how many times that same
request was sent before (its attempt number), never on thread scheduling or the order of other
calls: a retry of a failed request gets a fresh draw, and a rerun of a compile sees the same faults.

Retryable faults carry a `retry_after` hint of `backoff * 2**attempt` seconds (DSPy sleeps that
long before the next attempt); with `backoff=None` DSPy's own exponential backoff (1 s, 2 s, 4 s...)
applies. Tests use a tiny `backoff` so retries stay fast while still backing off exponentially.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dspy import lm15
from dspy.lm15 import Message, Response, TextPart, Usage

FAULT_KINDS = ("timeout", "rate_limit", "empty", "malformed", "exception")
OUTAGE_KINDS = ("refused",)  # not in FAULT_KINDS: a rate of them stops a compile
RETRYABLE_KINDS = ("timeout", "rate_limit")
MALFORMED_TEXT = "Sorry, I got a little lost there. The answer might be something like { \"answer\": "


class InjectedFault(RuntimeError):
    """The `exception` fault: an engine that crashes with an error DSPy does not know."""


@dataclass
class FaultRecord:
    """One call the engine saw: its request key, attempt number, time, and the fault (None = none)."""

    key: str
    attempt: int
    at: float
    fault: str | None


@dataclass
class FaultStats:
    """What a `FaultyEngine` did, for tests and reports."""

    calls: int = 0
    faults: Counter = field(default_factory=Counter)
    records: list[FaultRecord] = field(default_factory=list)

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    @property
    def retried(self) -> int:
        """Calls that repeated a request whose previous attempt raised a retryable fault."""
        last: dict[str, str | None] = {}
        count = 0
        for record in self.records:
            if record.attempt > 0 and last.get(record.key) in RETRYABLE_KINDS:
                count += 1
            last[record.key] = record.fault
        return count

    def retry_gaps(self) -> list[tuple[int, float]]:
        """(attempt, seconds since the previous attempt) for every retry after a retryable fault."""
        previous: dict[str, FaultRecord] = {}
        gaps = []
        for record in self.records:
            before = previous.get(record.key)
            if before is not None and before.fault in RETRYABLE_KINDS and record.attempt == before.attempt + 1:
                gaps.append((record.attempt, record.at - before.at))
            previous[record.key] = record
        return gaps

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "faults_injected": self.injected, "faults_by_kind": dict(self.faults),
                "retries_after_retryable_faults": self.retried}


def request_key(request: Any) -> str:
    """A stable digest of what the request asks: system text, messages and generation config."""
    system = request.system
    if not isinstance(system, str):
        system = "".join(getattr(part, "text", "") or "" for part in system or ())
    messages = "\x1e".join(f"{m.role}:{m.text or ''}" for m in request.messages)
    text = f"{request.model}\x1f{system}\x1f{messages}\x1f{request.config!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _draw(seed: int, key: str, attempt: int, salt: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}:{attempt}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultyEngine:
    """Wraps `inner_engine`; a seeded `rate` of its calls fail with one of `kinds`.

    Args:
        inner_engine: the engine that answers the calls that do not fail.
        rate: probability (0-1) that one attempt of a request fails.
        seed: the fault pattern; the same seed and requests give the same faults.
        kinds: which faults to inject (see `FAULT_KINDS`), chosen uniformly.
        backoff: base of the `retry_after` hint on retryable faults (`backoff * 2**attempt` s);
            None leaves the delay to DSPy's exponential backoff.
    """

    def __init__(self, inner_engine: Any, rate: float = 0.2, seed: int = 0, kinds: Sequence[str] = FAULT_KINDS,
                 backoff: float | None = None):
        unknown = sorted(set(kinds) - set(FAULT_KINDS) - set(OUTAGE_KINDS))
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS + OUTAGE_KINDS}, got {tuple(kinds)!r}.")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be between 0 and 1, got {rate!r}.")
        self.inner = inner_engine
        self.rate = rate
        self.seed = seed
        self.kinds = tuple(kinds)
        self.backoff = backoff
        self.model = getattr(inner_engine, "model", "faulty")
        self.stats = FaultStats()
        self._attempts: Counter = Counter()
        self._lock = threading.Lock()

    def fault_for(self, key: str, attempt: int) -> str | None:
        """The fault the `attempt`-th sending of the request `key` gets (None: it goes through)."""
        if _draw(self.seed, key, attempt, "fail") >= self.rate:
            return None
        return self.kinds[int(_draw(self.seed, key, attempt, "kind") * len(self.kinds)) % len(self.kinds)]

    def complete(self, request: Any) -> Response:
        key = request_key(request)
        with self._lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
            fault = self.fault_for(key, attempt)
            self.stats.calls += 1
            if fault:
                self.stats.faults[fault] += 1
            self.stats.records.append(FaultRecord(key, attempt, time.monotonic(), fault))
        hint = None if self.backoff is None else self.backoff * 2**attempt
        if fault == "timeout":
            raise lm15.TimeoutError(f"injected timeout (attempt {attempt})", retry_after=hint)
        if fault == "rate_limit":
            raise lm15.RateLimitError(f"injected rate limit (attempt {attempt})", status=429, retry_after=hint)
        if fault == "exception":
            raise InjectedFault(f"injected engine crash (attempt {attempt})")
        if fault == "refused":
            raise ConnectionRefusedError(111, f"injected: connection refused (attempt {attempt})")
        if fault in ("empty", "malformed"):
            text = "" if fault == "empty" else MALFORMED_TEXT
            return Response(id=None, model=self.model, message=Message.assistant((TextPart(text),)),
                            finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=len(text.split())))
        return self.inner.complete(request)

    def stream(self, request: Any):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()

    def __deepcopy__(self, memo: dict) -> FaultyEngine:
        return self  # a shared handle, like the engine it wraps

    def dump_state(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "kinds": list(self.kinds), "backoff": self.backoff}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> FaultyEngine:
        raise NotImplementedError("A FaultyEngine is a test harness; wrap the loaded program's engine again.")


def simulated_faulty_compile(run_dir: Any, *, rate: float = 0.2, seed: int = 0, backoff: float | None = 0.001,
                             num_retries: int = 3, num_trials: int = 8, n_train: int = 16,
                             n_val: int = 60) -> dict[str, Any]:
    """Compile on the simulated world with both LMs behind a `FaultyEngine`; return the figures.

    Used by tests/test_faults.py and examples/reliability_figures.py.
    """
    import dspy

    from cd_dspy.optimizer import ConceptDistillation
    from cd_dspy.testing.simulated import SimulatedTarget, SimulatedTeacher, answer_match, simulated_splits

    target_engine = FaultyEngine(SimulatedTarget(), rate=rate, seed=seed, backoff=backoff)
    teacher_engine = FaultyEngine(SimulatedTeacher(), rate=rate, seed=seed + 1, backoff=backoff)
    target = dspy.LM("simulated/target", engine=target_engine, cache=False, num_retries=num_retries)
    teacher = dspy.LM("simulated/teacher", engine=teacher_engine, cache=False, num_retries=num_retries)
    trainset, valset = simulated_splits(n_train, n_val, seed=1)
    cd = ConceptDistillation(metric=answer_match, teacher_lm=teacher, target_lm=target, num_trials=num_trials,
                             seed=0, run_dir=run_dir, progress=False)
    started = time.perf_counter()
    compiled = cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=trainset, valset=valset)
    result = cd.result
    return {
        "fault_rate": rate, "num_retries": num_retries, "backoff_s": backoff,
        "target": target_engine.stats.to_dict(), "teacher": teacher_engine.stats.to_dict(),
        "max_retry_gap_by_attempt": _max_gaps(target_engine.stats, teacher_engine.stats),
        "n_train": len(trainset), "n_val": len(valset), "n_mistakes": result.n_mistakes,
        "train_score": result.train_score, "baseline_score": result.baseline_score,
        "best_score": result.best_score, "improved": result.improved,
        "selected_rules": [r.text for r in result.selected_rules], "message": result.message,
        "seconds": round(time.perf_counter() - started, 2),
        "_engines": (target_engine, teacher_engine), "_result": result, "_compiled": compiled,
    }


def _max_gaps(*stats: FaultStats) -> dict[int, float]:
    gaps: dict[int, float] = {}
    for s in stats:
        for attempt, gap in s.retry_gaps():
            gaps[attempt] = round(max(gaps.get(attempt, 0.0), gap), 4)
    return dict(sorted(gaps.items()))
