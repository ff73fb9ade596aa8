"""The one held-out evaluator: each example's score and outputs, and the LM calls, tokens and seconds it took.

A record is appended to the run directory as soon as its example is scored, keyed by the program (its
instructions, demos, LM and settings: `keys.program_key`), the metric and the example itself; a rerun
reads the records back and runs only the examples that have none, so a finished call is never repeated.
An example whose run failed (an LM error, an unparseable reply) scores 0 in this report and is not
stored, so the next run tries it again; a fatal LM failure (`cd_dspy.core.failures`) stops the run.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from cd_dspy.core.evaluation import ScoredMetric, program_lm
from cd_dspy.core.failures import (
    EXAMPLE_ERRORS_LOGGER,
    LMUnavailableError,
    failure_kind,
    is_fatal,
    quiet_example_errors,
)
from cd_dspy.core.keys import digest, examples_key, metric_key, program_key
from cd_dspy.core.progress import Progress
from cd_dspy.core.result import _Record
from cd_dspy.core.run_dir import RunDir, jsonable

HELDOUT_LOG = "heldout.jsonl"
logger = logging.getLogger(__name__)
dump_logger = logging.getLogger(EXAMPLE_ERRORS_LOGGER)  # whole errors of failed examples (DEBUG; -v)


@dataclass
class ExampleRecord(_Record):
    """One program run on one held-out example."""

    index: int
    score: float
    outputs: dict[str, Any]
    calls: int = 0  # LM calls that reached the model
    cached_calls: int = 0  # LM calls DSPy's cache answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall seconds of the whole program run
    call_seconds: list[float] = field(default_factory=list)  # seconds of each call that reached the model
    failed: str | None = None  # the failure kind when the run failed (never stored)


@dataclass
class RunSummary:
    """What one program cost per held-out example (one request), from its records.

    Per-request cost and latency are measured on the requests whose every LM call reached the model
    (`measured`): a request DSPy's cache answered took no time and no tokens, which production calls do."""

    n: int
    calls: int
    cached_calls: int
    prompt_tokens: int
    completion_tokens: int
    failed: int
    measured: int  # requests with no cached call and no failure
    prompt_tokens_per_request: float | None
    completion_tokens_per_request: float | None
    median_call_seconds: float | None  # median latency of one LM call that reached the model
    median_example_seconds: float | None  # median wall seconds of one measured request
    mean_lm_seconds: float | None  # mean seconds of LM calls per measured request

    @classmethod
    def of(cls, records: Sequence[ExampleRecord]) -> RunSummary:
        timed = [r for r in records if r.calls and not r.cached_calls and not r.failed]
        calls = [s for r in records for s in r.call_seconds]

        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        return cls(n=len(records), calls=sum(r.calls for r in records),
                   cached_calls=sum(r.cached_calls for r in records),
                   prompt_tokens=sum(r.prompt_tokens for r in records),
                   completion_tokens=sum(r.completion_tokens for r in records),
                   failed=sum(bool(r.failed) for r in records), measured=len(timed),
                   prompt_tokens_per_request=mean([r.prompt_tokens for r in timed]),
                   completion_tokens_per_request=mean([r.completion_tokens for r in timed]),
                   median_call_seconds=statistics.median(calls) if calls else None,
                   median_example_seconds=statistics.median(r.seconds for r in timed) if timed else None,
                   mean_lm_seconds=mean([sum(r.call_seconds) for r in timed]))

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class CallLog(BaseCallback):
    """Counts one program run's LM calls: calls that reached the model with their tokens and seconds, and
    cache hits. It is both a DSPy callback and `settings.usage_tracker` (told only of uncached calls); the usage
    tracker it stands in for (a caller's meter) is told too."""

    def __init__(self, outer: Any = None) -> None:
        self.outer = outer
        self.record = ExampleRecord(index=-1, score=0.0, outputs={})
        self._started: dict[str, float] = {}
        self._billed: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()

    def __deepcopy__(self, memo: dict) -> CallLog:
        return self  # DSPy copies the usage tracker into worker threads: keep one shared log

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._local.call_id = call_id
        with self._lock:
            self._started[call_id] = time.perf_counter()

    def add_usage(self, model: str, usage: dict[str, Any] | None) -> None:
        if self.outer is not None:
            self.outer.add_usage(model, usage)
        usage = dict(usage or {})
        with self._lock:
            self._billed.add(getattr(self._local, "call_id", ""))
            self.record.prompt_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            self.record.completion_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            started = self._started.pop(call_id, None)
            if started is None or exception is not None:
                return
            if call_id in self._billed:
                self.record.calls += 1
                self.record.call_seconds.append(round(time.perf_counter() - started, 4))
            else:
                self.record.cached_calls += 1


class HeldOutRunner:
    """Runs programs on a fixed list of held-out examples, one resumable record per (program, example)."""

    def __init__(self, examples: Sequence[dspy.Example], metric: Any, *, run_dir: RunDir, num_threads: int = 1,
                 progress: Progress | None = None, log_name: str = HELDOUT_LOG, warn_each: bool = True):
        self.examples = list(examples)
        self.warn_each = warn_each  # a WARNING per failed example (else DEBUG: the caller reports them at once)
        self.metric = metric if isinstance(metric, ScoredMetric) else ScoredMetric(metric)
        self.run_dir = run_dir
        self.num_threads = num_threads
        self.progress = progress or Progress(enabled=False)
        self.log_name = log_name
        self._example_keys = [examples_key([e]) for e in self.examples]
        self._metric_key = metric_key(self.metric)
        self._done: dict[str, ExampleRecord] = {}
        for record in run_dir.read_jsonl(log_name):
            self._done[record.pop("key")] = ExampleRecord.from_dict(record)

    def run(self, program: dspy.Module, name: str, role: str = "target") -> list[ExampleRecord]:
        """Records of `program` on every example, in order (stored ones reused; the rest run now)."""
        base = program_key(program)
        keys = [digest([base, self._metric_key, k]) for k in self._example_keys]
        records: list[ExampleRecord | None] = [self._reused(k, i) for i, k in enumerate(keys)]
        todo = [i for i, r in enumerate(records) if r is None]
        bar = self.progress.bar(f"test: {name}", total=len(records), initial=len(records) - len(todo))
        fatal: list[BaseException] = []

        def one(index: int) -> ExampleRecord:
            record = self._run_one(program, index, fatal)
            if record.failed is None and self.metric.error is None:  # a broken metric's 0 is no score
                self.run_dir.append_jsonl(self.log_name, {"key": keys[index], **record.to_dict()})
                self._done[keys[index]] = record
            bar.update(1)
            return record

        with quiet_example_errors():
            if self.num_threads > 1 and len(todo) > 1:
                from dspy.utils.parallelizer import ParallelExecutor

                executor = ParallelExecutor(num_threads=self.num_threads, disable_progress_bar=True,
                                            max_errors=len(todo) + 1, provide_traceback=False)
                fresh = executor.execute(lambda i: None if fatal else one(i), todo)
            else:
                fresh = [None if fatal else one(i) for i in todo]
        bar.close()
        self.metric.raise_if_failed()
        if fatal:
            raise LMUnavailableError(role, program_lm(program), fatal[0])
        for index, record in zip(todo, fresh, strict=True):
            records[index] = record or ExampleRecord(index=index, score=0.0, outputs={}, failed="error")
        failed = [r for r in records if r.failed]  # type: ignore[union-attr]
        # every run failed, and not only by replies out of format (a model that answers, never in the format, is
        # a poor model, scored 0; one that does not answer at all is down)
        if len(todo) > 1 and len(failed) == len(todo) and any(r.failed != "unparseable" for r in failed):
            raise LMUnavailableError(role, program_lm(program), f"every one of {len(todo)} examples failed "
                                     "(see the WARNING and DEBUG log for the LM's errors)")
        return records  # type: ignore[return-value]

    def _reused(self, key: str, index: int) -> ExampleRecord | None:
        record = self._done.get(key)
        return None if record is None else ExampleRecord.from_dict({**record.to_dict(), "index": index})

    def _run_one(self, program: dspy.Module, index: int, fatal: list[BaseException]) -> ExampleRecord:
        example = self.examples[index]
        log = CallLog(outer=dspy.settings.get("usage_tracker"))
        started = time.perf_counter()
        try:
            with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), log], usage_tracker=log):
                prediction = program(**example.inputs())
            score = self.metric(example, prediction)
            outputs = jsonable(dict(prediction.items())) if isinstance(prediction, dspy.Prediction) else \
                {"output": jsonable(prediction)}
            failed = None
        except Exception as exc:  # a failed example: scored 0 here, retried on the next run
            if is_fatal(exc):
                fatal.append(exc)
            score, outputs, failed = 0.0, {"error": f"{type(exc).__name__}: {exc}"[:500]}, failure_kind(exc)
            to, level = (logger, logging.WARNING) if self.warn_each else (dump_logger, logging.DEBUG)
            to.log(level, "Held-out example %d failed (%s): %s; it scores 0 in this report and is retried on the "
                   "next run.", index, failed, exc)
        log.record.index, log.record.score, log.record.outputs = index, float(score), outputs
        log.record.seconds, log.record.failed = round(time.perf_counter() - started, 4), failed
        return log.record
