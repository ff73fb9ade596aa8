"""Scale-out: worker processes, on one machine or many, evaluate one rule search through Optuna's RDB storage.

The main compile runs collect, induce and verify, then creates the study and publishes what a worker
needs (`ScoreStore.publish`: the rules, the valset, the search part, the keys its program and metric
must match, and `Workers.setup`, the import path of a function that rebuilds the program, metric and
target LM on the worker's machine). It decides every trial's parameters itself and enqueues them
(`Study.enqueue_trial`): the first trials, then TPE proposals in rounds of `batch_size` made from the
finished trials in a fixed order, then backward elimination. Workers (`run_worker`, `cd-dspy worker`)
take the waiting trials with `Study.optimize` under heartbeats; a worker that dies is found stale by
`optuna.storages.fail_stale_trials` and its trial is re-enqueued by `RetryHeartbeatStaleTrialCallback`
(formerly `RetryFailedTrialCallback`). Scores go to the shared `ScoreStore` as each example is scored,
so a retried trial pays only for the examples its dead worker had not finished. Because the parameters
never depend on which worker finished first, the search gives the same trials, ranking and decision
with any number of workers, and the same as `Workers(evaluate_in_main=True)` with none.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy
import optuna
from optuna.trial import TrialState

from cd_dspy.core.evaluation import CachedEvaluator
from cd_dspy.core.keys import program_key
from cd_dspy.core.result import Rule, Trial
from cd_dspy.core.usage import TARGET, UsageMeter
from cd_dspy.phases.search import RuleSelector, Selection, subset_of
from cd_dspy.scale.shared_store import ScoreStore, retrying

logger = logging.getLogger(__name__)

STATE = "cd_dspy.workers"  # study user attribute: {"state": "search" | "done", "published": time}
SLOT = "cd_dspy.slot"  # trial user attribute: the position the main process planned it at (kept by retries)
ERROR = "cd_dspy.error"  # trial user attribute: why a worker's objective raised
REFUSED = "cd_dspy.refused."  # study user attribute prefix: why the worker host:pid would not join
USAGE = "cd_dspy.usage"  # trial user attribute: [target calls, prompt tokens, completion tokens] of a worker
PLANNED = "cd_dspy.params"  # trial user attribute: the parameters the main process planned (kept by retries)


class WorkerError(RuntimeError):
    """A worker could not evaluate a trial (its program, metric or LM failed there)."""


@dataclass(frozen=True)
class Workers:
    """Run the rule search on worker processes that join the study (`cd-dspy worker`).

    Args:
        setup: "package.module:function"; `function(**setup_args)` returns (program, metric, target_lm)
            on each worker: the same program (before rules), metric and target LM as the compile's. The
            compile publishes their keys and a worker whose rebuild differs refuses to start.
        setup_args: JSON-able keyword arguments of `setup` (no secrets: they are stored in the database).
        evaluate_in_main: the main process evaluates waiting trials too (with no worker: one process).
        batch_size: TPE proposals per round; a fixed number, so results do not depend on the workers.
        heartbeat_interval, grace_period: seconds; a trial whose heartbeat is older than `grace_period`
            belongs to a dead worker and is retried (at most `max_retry` times).
        poll_seconds: how often idle processes look for work.
        wait_timeout: the main process gives up (WorkerError) when no trial finished for this many seconds
            (None: wait for workers indefinitely, logging what it waits for every 30 s).
    """

    setup: str
    setup_args: dict[str, Any] = field(default_factory=dict)
    evaluate_in_main: bool = False
    batch_size: int = 4
    heartbeat_interval: int = 2
    grace_period: int = 10
    max_retry: int = 3
    poll_seconds: float = 0.2
    wait_timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.setup, str) or ":" not in self.setup:
            raise ValueError(f"Workers(setup=...) must be 'package.module:function' returning (program, metric, "
                             f"target_lm) on each worker, got {self.setup!r}.")
        for name in ("batch_size", "heartbeat_interval", "grace_period"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Workers({name}=...) must be a positive int, got {value!r}.")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"Workers(grace_period={self.grace_period}) must exceed heartbeat_interval="
                             f"{self.heartbeat_interval}, or live workers' trials would be retried.")


def check_workers(workers: Any, storage: Any, minibatch_size: int | None) -> None:
    """Validate `ConceptDistillation(workers=...)` against the other settings."""
    if workers is None:
        return
    if not isinstance(workers, Workers):
        raise TypeError(f"workers must be a cd_dspy.scale.workers.Workers(setup='package.module:function'), "
                        f"got {type(workers).__name__}.")
    if isinstance(storage, str) and "://" not in storage:
        raise ValueError("workers need an Optuna RDB storage URL (heartbeats retry a dead worker's trial; Optuna's "
                         "journal storage has none): storage='postgresql://user:password@host/db' across machines, "
                         "or 'sqlite:///path/study.db' on one machine.")
    if minibatch_size is not None:
        raise ValueError("minibatch_size cannot be combined with workers: pruning decisions depend on the order in "
                         "which workers finish, so the result would depend on timing; drop one of the two.")


def rdb_storage(url: str, interval: int, grace: int, max_retry: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; a stale trial is re-enqueued by Optuna's retry callback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since 2.9
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=interval, grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry))


def public_url(url: str) -> str:
    """`url` with its password masked (for logs and messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: shown as given
        return url


def _example_dicts(examples: list[dspy.Example]) -> list[dict[str, Any]]:
    return [{"data": e.toDict(), "inputs": sorted(e.inputs().keys())} for e in examples]


def _examples(rows: list[dict[str, Any]]) -> list[dspy.Example]:
    return [dspy.Example(**row["data"]).with_inputs(*row["inputs"]) for row in rows]


def _type_path(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}:{type(obj).__qualname__}"


# -- the main process ------------------------------------------------------------------------------

class DistributedSelector(RuleSelector):
    """A `RuleSelector` whose trials are enqueued here and evaluated by the workers that join its study."""

    def __init__(self, *args: Any, workers: Workers, worker_command: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.workers = workers
        self.worker_command = worker_command
        self._next_slot = 1 + max((t.user_attrs[SLOT] for t in self._all()), default=-1)
        self._round = 0
        self._reported: set[int] = set()
        self._refusals: set[str] = set(k for k in self.study.user_attrs if k.startswith(REFUSED))
        self._old_failures = {t.number for t in self._all() if t.state == TrialState.FAIL}
        for t in self._trials():  # a rerun after a worker's error (or retries spent) tries those trials again
            if t.state == TrialState.FAIL:
                if self.rules and not planned_params(t):
                    raise WorkerError(f"trial {t.number} failed before it took its parameters and the study records "
                                      "none (made by an older cd-dspy); rerun the compile with resume=False.")
                attrs = {k: v for k, v in t.user_attrs.items() if k in ("enqueued", SLOT, PLANNED)}
                self.study.enqueue_trial(planned_params(t), user_attrs=attrs)

    def run(self) -> Selection:
        try:
            return super().run()
        finally:
            self.study.set_user_attr(STATE, {**self.study.user_attrs.get(STATE, {}), "state": "done"})

    def _all(self) -> list[optuna.trial.FrozenTrial]:
        """Every planned trial, retries included (not the empty trials a worker's `ask` may race to create)."""
        return [t for t in self.study.get_trials(deepcopy=False) if SLOT in t.user_attrs]

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        """One trial per planned slot, in the order planned: the completed one when a retry completed."""
        by_slot: dict[int, optuna.trial.FrozenTrial] = {}
        for t in self._all():
            kept = by_slot.get(t.user_attrs[SLOT])
            if kept is None or (t.state == TrialState.COMPLETE, t.number) > (kept.state == TrialState.COMPLETE,
                                                                                kept.number):
                by_slot[t.user_attrs[SLOT]] = t
        return [by_slot[slot] for slot in sorted(by_slot)]

    def _enqueue(self, params: dict[str, int], why: str) -> None:
        self.study.enqueue_trial(params, user_attrs={"enqueued": why, SLOT: self._next_slot, PLANNED: params})
        self._next_slot += 1

    def _run_enqueued(self) -> None:
        """Workers take it; `_settle` waits."""

    def _notify(self, number, chosen, score, state, n, started) -> None:
        """Trials are reported by `_settle` when the study shows them finished (wherever they ran)."""

    def _step(self) -> int:
        pending = [t for t in self._trials() if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        if pending:  # the first trials (or those of an interrupted compile)
            self._settle()
            return len(pending)
        need = min(self.num_trials, 2 ** len(self.rules)) - len(self._scored())
        k = max(1, min(self.workers.batch_size, need))
        scored, fresh = self._scored(), set()
        for params in self._propose(k):
            subset = tuple(subset_of(params, self.rules))
            if subset not in scored and subset not in fresh and not self.over_cap(subset):  # repeats: paid twice
                fresh.add(subset)
                self._enqueue(params, "tpe")
        self._settle()
        return k

    def _propose(self, k: int) -> list[dict[str, int]]:
        """`k` TPE proposals from the completed trials in planned order (seeded per round: deterministic)."""
        history = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value)
                   for t in self._complete()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
            sampler = optuna.samplers.TPESampler(seed=self.seed + 1 + self._round, multivariate=True,
                                                 n_startup_trials=5, constant_liar=True)
        self._round += 1
        planning = optuna.create_study(direction="maximize", sampler=sampler)
        planning.add_trials(history)
        proposals = []
        for _ in range(k):
            trial = planning.ask()
            proposals.append({r.id: trial.suggest_categorical(r.id, [0, 1]) for r in self.rules})
        return proposals

    def _settle(self) -> None:
        """Wait until no planned trial is waiting or running; retry dead workers' trials; report each finished one."""
        objective = guarded(self._tracked(self._objective))
        last_change, last_log, finished = time.monotonic(), 0.0, -1
        while True:
            if self.workers.evaluate_in_main and any(t.state == TrialState.WAITING for t in self._all()):
                run_one(self.study, objective)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: failed, then retried
            trials = self._all()
            self._report(trials)
            self._log_refusals()
            failed = [t for t in trials if t.state == TrialState.FAIL and ERROR in t.user_attrs
                      and t.number not in self._old_failures]
            if failed:
                raise WorkerError(f"a worker failed on trial {failed[0].number}: {failed[0].user_attrs[ERROR]}. "
                                  "Fix the cause and rerun the compile (finished trials and scores are kept).")
            pending = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
            if not pending:
                break
            done = sum(t.state.is_finished() for t in trials)
            now = time.monotonic()
            if done != finished:
                finished, last_change = done, now
            if self.workers.wait_timeout is not None and now - last_change > self.workers.wait_timeout:
                raise WorkerError(f"no trial finished for {self.workers.wait_timeout:g} s ({len(pending)} waiting or "
                                  f"running); start workers with: {self.worker_command}")
            if now - last_log > 30:
                last_log = now
                logger.info("Select: waiting for workers (%d trials waiting or running); start them with: %s",
                            len(pending), self.worker_command)
            time.sleep(self.workers.poll_seconds)
        lost = [t for t in self._trials() if t.state != TrialState.COMPLETE]
        if lost:
            raise WorkerError(f"trial {lost[0].number} ({subset_of(lost[0].params, self.rules)}) failed "
                              f"{self.workers.max_retry + 1} times (its workers died); rerun the compile.")

    def _log_refusals(self) -> None:
        for key, why in self.study.user_attrs.items():
            if key.startswith(REFUSED) and key not in self._refusals:
                self._refusals.add(key)
                logger.warning("Select: worker %s did not join: %s", key[len(REFUSED):], why)

    def _report(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        for t in trials:
            if t.state != TrialState.COMPLETE or t.number in self._reported:
                continue
            self._reported.add(t.number)
            if self.best is None or t.value > self.best:
                self.best = t.value
            if USAGE in t.user_attrs:  # a worker's calls count in this compile's usage (not against its caps)
                self.evaluator.meter.add_calls(TARGET, *t.user_attrs[USAGE])
            seconds = round(t.duration.total_seconds(), 3) if t.duration else 0.0
            record = Trial(t.number, subset_of(t.params, self.rules), t.value, "complete", len(self.order), seconds)
            logger.info("Select: trial %d complete rules=%s score=%.1f (%s)", t.number, record.rule_ids, t.value,
                        t.user_attrs.get("cd_dspy.worker", "?"))
            if self.on_trial:
                self.on_trial(record, self.best)


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> bool:
    """Evaluate one waiting trial; False when another process finished it first. Optuna takes a waiting
    trial under a row lock on PostgreSQL and MySQL; SQLite has none, so two local workers may now and then
    both take one trial (and pay for it twice), and a slow worker's trial may be failed as stale (and
    retried) meanwhile. Whoever finishes second moves on: its result is dropped, the first one's kept.
    Told apart by the trial's state, not by Optuna's message: when Optuna cannot record this process's
    outcome (a ValueError "Cannot tell a COMPLETE trial", UpdateFinishedTrialError, or its own assertion
    when the trial was failed meanwhile) and the trial is finished, another process finished it."""
    taken: dict[str, Any] = {}

    def tracked(trial: optuna.Trial) -> float:
        taken["trial"] = trial
        try:
            return objective(trial)
        except BaseException as exc:
            taken["raised"] = exc
            raise

    try:
        study.optimize(tracked, n_trials=1, catch=())
        return True
    except Exception as exc:
        trial = taken.get("trial")
        if trial is None or exc is taken.get("raised") or not _finished(study, trial):
            raise  # the objective's own error (a MetricError, say), recorded as the trial's failure
        logger.info("Select: trial %d was finished by another process first (%s: %s).", trial.number,
                    type(exc).__name__, exc)
        return False


def _finished(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether `trial` is finished in the storage (whoever finished it)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return any(t.number == trial.number for t in study.get_trials(deepcopy=False, states=done))


def planned_params(trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """The parameters the main process planned for `trial` (it may have failed before it suggested them)."""
    return trial.params or trial.user_attrs.get(PLANNED, {})


def guarded(objective: Callable[[optuna.Trial], float], meter: UsageMeter | None = None
            ) -> Callable[[optuna.Trial], float]:
    """`objective` for planned trials only, recording on the trial why it failed, where it ran and (with a
    worker's `meter`) the target calls and tokens it cost."""

    def run(trial: optuna.Trial) -> float:
        if SLOT not in trial.user_attrs:
            # `ask` found no waiting trial (another process took the last one) and made an empty one
            raise optuna.TrialPruned("not a planned trial")
        trial.set_user_attr("cd_dspy.worker", f"{socket.gethostname()}:{os.getpid()}")
        before = meter.snapshot()[TARGET] if meter else None
        try:
            value = objective(trial)
            if meter and before:
                after = meter.snapshot()[TARGET]
                trial.set_user_attr(USAGE, [after.calls - before.calls, after.prompt_tokens - before.prompt_tokens,
                                            after.completion_tokens - before.completion_tokens])
            return value
        except Exception as exc:
            trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:  # Ctrl-C or a stop: hand the trial back before Optuna marks it failed
            trial.study.enqueue_trial(planned_params(trial), user_attrs=dict(trial.user_attrs))
            raise

    return run


def distributed_selector(cd: Any, base: dspy.Module, rules: list[Rule], evaluator: CachedEvaluator,
                         search: list[int], *, storage: str, study_name: str,
                         on_trial: Callable[[Trial, float | None], None] | None, progress: Any,
                         kind: type = DistributedSelector, extra: dict | None = None, **more: Any) -> Any:
    """Create the study, publish the search (with `extra`) for workers, and return the `kind` that drives it."""
    workers: Workers = cd.workers
    if storage is None:
        raise ValueError("workers need a storage all of them reach: pass storage='postgresql://user:password@host/db' "
                         "(or a run_dir, whose SQLite study.db serves workers on this machine).")
    store = retrying(lambda: ScoreStore(storage), f"the score store at {public_url(storage)}")
    if not cd.resume:
        store.forget(evaluator.examples_key)
    evaluator.shared = store
    study = optuna.create_study(
        direction="maximize", study_name=study_name, load_if_exists=True,
        storage=retrying(lambda: rdb_storage(storage, workers.heartbeat_interval, workers.grace_period,
                                              workers.max_retry), f"the Optuna storage at {public_url(storage)}"),
        sampler=optuna.samplers.RandomSampler(seed=cd.seed))  # never samples: every trial is enqueued
    store.publish(study_name, {
        "version": 1, "setup": workers.setup, "setup_args": workers.setup_args,
        "adapter": _type_path(dspy.settings.adapter), "conditional_rules": cd.conditional_rules,
        "rules": [r.to_dict() for r in rules], "valset": _example_dicts(evaluator.examples), "search": search,
        "seed": cd.seed, "num_trials": cd.num_trials, "num_threads": cd.threads,
        "heartbeat": [workers.heartbeat_interval, workers.grace_period, workers.max_retry],
        "poll_seconds": workers.poll_seconds,
        "keys": {"program": program_key(cd.program_with(base)), "metric": evaluator.metric_key,
                 "examples": evaluator.examples_key}, **(extra or {})})
    study.set_user_attr("cd_dspy.rules", {r.id: r.text for r in rules})  # for the dashboard
    study.set_user_attr(STATE, {"state": "search", "published": time.time()})
    command = f"cd-dspy worker --storage '{public_url(storage)}' --study {study_name}"
    progress.note(f"select: search published for workers; start them with: {command}")
    return kind(lambda chosen: cd.program_with(base, chosen), rules, evaluator, indices=search,
                               num_trials=cd.num_trials, seed=cd.seed, storage=None, study_name=study_name,
                               minibatch_size=None, on_trial=on_trial, study=study, workers=workers,
                               worker_command=command, **more)
