"""Scoring: the user's metric made strict, and a valset evaluator that never pays twice.

`ScoredMetric` accepts bool/int/float or a `dspy.Prediction(score=..., feedback=...)` and turns a
metric that raises or returns something else into a clear `MetricError` (instead of the silent
failure scores `dspy.Evaluate` would give). `CachedEvaluator` runs `dspy.Evaluate` only on the
(prompt, example) pairs it has not scored before, and keeps those scores in the run directory.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from cd_dspy.core.keys import digest, examples_key, metric_key, program_key
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import UsageMeter

EVALUATIONS_FILE = "evaluations.jsonl"
logger = logging.getLogger(__name__)


class MetricError(ValueError):
    """The user's metric raised or returned something that is not a score."""


def metric_name(metric: Callable) -> str:
    return getattr(metric, "__name__", type(metric).__name__)


class ScoredMetric:
    """Wraps a user metric: returns a float score, remembers feedback, surfaces metric bugs."""

    def __init__(self, metric: Callable):
        if not callable(metric):
            raise TypeError(f"metric must be callable as metric(example, prediction, trace=None), got {metric!r}.")
        self.metric = metric
        self.feedback: dict[int, str | None] = {}
        self.error: MetricError | None = None
        self._lock = threading.Lock()

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        try:
            # as dspy.Evaluate calls it: two arguments unless there is a trace (a two-argument metric works too)
            raw = self.metric(example, prediction) if trace is None else self.metric(example, prediction, trace)
        except Exception as exc:  # the user's metric is broken: remember it and stop after Evaluate
            self._fail(f"metric {metric_name(self.metric)!r} raised {type(exc).__name__}: {exc}. "
                       "Fix the metric so it returns a score for every prediction (also failed ones).")
            return 0.0
        score, feedback = self.split(raw)
        with self._lock:
            self.feedback[id(example)] = feedback
        return score

    def split(self, raw: Any) -> tuple[float, str | None]:
        feedback = None
        if isinstance(raw, dspy.Prediction) or (hasattr(raw, "score") and not isinstance(raw, int | float)):
            feedback = getattr(raw, "feedback", None)
            raw = getattr(raw, "score", None)
        if isinstance(raw, bool):
            return float(raw), feedback
        if isinstance(raw, int | float) and math.isfinite(raw):
            return float(raw), feedback
        self._fail(f"metric {metric_name(self.metric)!r} returned {raw!r} ({type(raw).__name__}); a metric must "
                   "return a bool, a finite number, or dspy.Prediction(score=..., feedback=...).")
        return 0.0, feedback

    def _fail(self, message: str) -> None:
        with self._lock:
            self.error = self.error or MetricError(message)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def prompt_key(program: dspy.Module) -> str:
    """A stable hash of everything that shapes the program's calls (`keys.program_key`)."""
    return program_key(program)


class CachedEvaluator:
    """Scores programs on a fixed example list; each (prompt, example) is run at most once.

    Scores are keyed by the program (instructions, fields, demos, LM settings, adapter) and the metric,
    so a changed adapter, LM setting or metric never replays another's scores."""

    def __init__(self, examples: Sequence[dspy.Example], metric: ScoredMetric, *, run_dir: RunDir,
                 meter: UsageMeter, num_threads: int, failure_score: float = 0.0,
                 log_name: str = EVALUATIONS_FILE, shared: Any = None):
        self.log_name = log_name
        self.shared = shared  # a `shared_store.ScoreStore` several worker processes read and write, or None
        self.metric_key = metric_key(metric)
        self.examples_key = examples_key(examples)  # a score belongs to these examples, not to positions
        self.examples = list(examples)
        self.metric = metric
        self.run_dir = run_dir
        self.meter = meter
        self.num_threads = num_threads
        self.failure_score = failure_score
        self.scores: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        for record in run_dir.read_jsonl(log_name):
            self.scores[(record["key"], record["index"])] = float(record["score"])

    def __call__(self, program: dspy.Module, indices: Sequence[int]) -> list[float]:
        """Scores of `program` on the examples at `indices` (in that order)."""
        key = digest([prompt_key(program), self.metric_key, self.examples_key])
        missing = [i for i in indices if (key, i) not in self.scores]
        if missing and self.shared is not None:  # scored by another worker: read, never paid again
            for index, score in self.shared.get(key, missing).items():
                self._keep(key, index, score, share=False)
            missing = [i for i in missing if (key, i) not in self.scores]
        if missing:
            self._run(program, key, missing)
        return [self.scores[(key, i)] for i in indices]

    def _run(self, program: dspy.Module, key: str, indices: list[int]) -> None:
        """Score `indices`; each real score is logged as soon as its example is scored (a kill loses none).

        An example whose run failed gets `failure_score` for this compile but is not logged, so a rerun
        tries it again; a fatal LM failure, or the LM raising on every example of a batch of several,
        raises `LMUnavailableError` (`cd_dspy.core.failures`); replies that merely do not parse (a rule can
        break the format) are per-example failures."""
        from cd_dspy.core.failures import LMUnavailableError
        from cd_dspy.core.usage import TARGET, BudgetExhausted

        devset = [self.examples[i] for i in indices]
        positions: dict[int, list[int]] = {}
        for index, example in zip(indices, devset, strict=True):
            positions.setdefault(id(example), []).append(index)

        def scored(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
            score = self.metric(example, prediction, trace)
            if self.metric.error is None:
                for index in positions.get(id(example), ()):
                    self._keep(key, index, score)
            return score

        scored.__name__ = metric_name(self.metric.metric)
        refused, lm_errors = self.meter.refused, self.meter.lm_errors(TARGET)
        evaluate = dspy.Evaluate(devset=devset, metric=scored, num_threads=self.num_threads,
                                 display_progress=False, display_table=False, max_errors=len(devset) + 1,
                                 failure_score=self.failure_score, provide_traceback=False)
        evaluate(program)
        self.metric.raise_if_failed()
        self.meter.raise_if_fatal()
        if self.meter.refused > refused:  # failures of refused calls are not real scores: keep none of them
            raise BudgetExhausted(self.meter.exhausted or "budget reached")
        failed = [i for i in indices if (key, i) not in self.scores]
        if len(failed) == len(indices) > 1 and self.meter.lm_errors(TARGET) - lm_errors >= len(failed):
            raise LMUnavailableError(TARGET, program_lm(program), f"every one of {len(indices)} examples failed "
                                     "(see the WARNING and DEBUG log for the LM's errors)")
        for index in failed:  # the program failed here (an LM error, an unparseable reply): a failure score
            self.meter.count_failure(TARGET, "failed_example")
            logger.warning("Evaluate: example %d failed (see the DEBUG log); it scores %g in this compile and is "
                           "retried on the next run.", index, self.failure_score)
            with self._lock:
                self.scores[(key, index)] = self.failure_score  # not logged: never stored as finished work

    def _keep(self, key: str, index: int, score: float, share: bool = True) -> None:
        with self._lock:
            if (key, index) in self.scores:
                return
            self.scores[(key, index)] = float(score)
        self.run_dir.append_jsonl(self.log_name, {"key": key, "index": index, "score": float(score)})
        if share and self.shared is not None:
            self.shared.put(key, index, score, self.examples_key)


def program_lm(program: dspy.Module) -> Any:
    """The LM a program runs on: its first predictor's, or DSPy's configured one."""
    return next((p.lm for _, p in program.named_predictors() if p.lm is not None), None) or dspy.settings.lm
