"""A worker process (`cd-dspy worker`): joins a published rule search and evaluates its waiting trials.

    cd-dspy worker --storage postgresql://user:password@host/db --study concept-distillation

`--study` is the compile's `study_name` (the compile adds a suffix per rule set, so a worker takes the
newest published study whose name starts with it) or a full name. A worker may start before the
compile reaches its search: it waits up to `wait` seconds for one to be published, and leaves when the
search is done or when it had nothing to do for `wait` seconds. What it rebuilds and how is
`workers.Workers.setup`; for the CLI's built-in tasks, `task_setup`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import dspy
import optuna
from optuna.trial import TrialState

from cd_dspy.core.evaluation import CachedEvaluator, ScoredMetric
from cd_dspy.core.failures import quiet_example_errors
from cd_dspy.core.keys import program_key
from cd_dspy.core.loading import load_attribute
from cd_dspy.core.result import Rule
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import TARGET, UsageMeter
from cd_dspy.phases.integrate import with_rules
from cd_dspy.phases.search import RuleSelector
from cd_dspy.scale.shared_store import ScoreStore, retrying
from cd_dspy.scale.verify_workers import verify_objective
from cd_dspy.scale.workers import (
    REFUSED,
    STATE,
    WorkerError,
    _examples,
    guarded,
    public_url,
    rdb_storage,
    run_one,
)

logger = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    """What one worker did."""

    study: str
    trials: int
    target_calls: int
    seconds: float


def task_setup(task: str, target: str, target_api_base: str | None = None, program: str | None = None,
               metric: str | None = None) -> tuple[dspy.Module, Any, Any]:
    """(program, metric, target LM) of a built-in task as `cd-dspy compile` builds them (its `--workers` setup)."""
    from cd_dspy.core.loading import make_program, resolve_lm
    from cd_dspy.programs import get_task

    found = get_task(task)
    args = argparse.Namespace(program=program)
    return (make_program(args, found), load_attribute(metric) if metric else found.metric,
            resolve_lm(target, "target", target_api_base))


def find_study(storage: optuna.storages.BaseStorage, name: str, wait: float, poll: float = 0.5) -> str:
    """The study `name`, or the newest published `name-*` whose search is running; waits up to `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        running = []
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            state = summary.user_attrs.get(STATE, {})
            if summary.study_name == name and state:
                return name
            if summary.study_name.startswith(f"{name}-") and state.get("state") == "search":
                running.append((state.get("published", 0), summary.study_name))
        if running:
            return max(running)[1]
        if time.monotonic() > deadline:
            raise WorkerError(f"no study named {name!r} (or {name}-*) was published for workers within {wait:g} s; "
                              "start the compile with workers (cd-dspy compile --workers, or "
                              "ConceptDistillation(workers=...)) on the same storage, or check --study.")
        time.sleep(poll)


def run_worker(storage: str, study: str, *, wait: float = 600.0, max_trials: int | None = None,
               num_threads: int | None = None) -> WorkerReport:
    """Evaluate waiting trials of the study until its search is done (or `max_trials`, or `wait` s idle)."""
    if not isinstance(storage, str) or "://" not in storage:
        raise ValueError(f"storage must be the compile's Optuna RDB storage URL (e.g. 'postgresql://user:password@"
                         f"host/db'), got {storage!r}.")
    started = time.perf_counter()
    store = retrying(lambda: ScoreStore(storage), f"the score store at {public_url(storage)}")
    plain = retrying(lambda: optuna.storages.RDBStorage(storage), f"the Optuna storage at {public_url(storage)}")
    # logged once both schemas exist: a compile started after this line never races the worker to create them
    logger.info("Worker: looking for a search named %s on %s", study, public_url(storage))
    trials, name, built, meter = 0, study, None, UsageMeter(None)
    while True:  # a compile with verification publishes its verify study first, then its search
        try:
            name = find_study(plain, study, wait)
        except WorkerError:
            if built is None:
                raise
            break  # verification kept no rule: there is no search
        spec = store.published(name)
        if spec is None:
            raise WorkerError(f"study {name!r} has no published search in {public_url(storage)}; it was not created "
                              "by a compile with workers.")
        built = built or load_attribute(spec["setup"])(**spec["setup_args"])
        trials += _work_on(storage, name, spec, store, built, meter, wait, num_threads,
                           None if max_trials is None else max_trials - trials)
        if "verify" not in spec or (max_trials is not None and trials >= max_trials):
            break
    store.close()
    return WorkerReport(name, trials, meter.snapshot()[TARGET].calls, round(time.perf_counter() - started, 3))


def _work_on(storage: str, name: str, spec: dict[str, Any], store: ScoreStore, built: tuple, meter: UsageMeter,
             wait: float, num_threads: int | None, max_trials: int | None) -> int:
    """Evaluate waiting trials of the study `name` until it is done (or `max_trials`, or `wait` s idle)."""
    opt_study = optuna.load_study(study_name=name, storage=rdb_storage(storage, *spec["heartbeat"]),
                                  sampler=optuna.samplers.RandomSampler())
    program, metric, target = built
    evaluator = CachedEvaluator(_examples(spec["valset"]), ScoredMetric(metric), run_dir=RunDir(None), meter=meter,
                                num_threads=num_threads or spec["num_threads"], shared=store)

    def program_with(chosen: list[Rule]) -> dspy.Module:
        return with_rules(program, chosen, lm=target, conditional=spec["conditional_rules"])

    context: dict[str, Any] = {"callbacks": [*dspy.settings.get("callbacks", []), meter], "usage_tracker": meter,
                               "adapter": load_attribute(spec["adapter"])() if spec["adapter"] else None}
    trials = 0
    with dspy.context(**context), quiet_example_errors():
        try:
            _check_rebuild(spec, program_key(program_with([])), evaluator)
        except WorkerError as exc:  # the main process logs it (else it would wait for this worker in silence)
            opt_study.set_user_attr(f"{REFUSED}{socket.gethostname()}:{os.getpid()}", str(exc))
            raise
        rules = [Rule.from_dict(r) for r in spec["rules"]]
        if "verify" in spec:  # one rule per trial, on its verification examples (cd_dspy.scale.verify_workers)
            objective = guarded(verify_objective(program_with, rules, evaluator, spec["verify"]), meter)
        else:
            objective = guarded(RuleSelector(program_with, rules, evaluator, indices=spec["search"],
                                             num_trials=spec["num_trials"], seed=spec["seed"], storage=None,
                                             study_name=name, minibatch_size=None, study=opt_study)._objective, meter)
        idle_since = time.monotonic()
        logger.info("Worker: joined study %s on %s", name, public_url(storage))
        while max_trials is None or trials < max_trials:
            if opt_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                trials += run_one(opt_study, objective)
                idle_since = time.monotonic()
            elif opt_study.user_attrs.get(STATE, {}).get("state") == "done":
                break
            elif time.monotonic() - idle_since > wait:
                logger.warning("Worker: nothing to do for %g s; leaving study %s.", wait, name)
                break
            else:
                time.sleep(spec["poll_seconds"])
    return trials


def _check_rebuild(spec: dict[str, Any], key: str, evaluator: CachedEvaluator) -> None:
    """The worker's program, metric and examples must be the compile's (else its scores would be another's)."""
    expected = spec["keys"]
    problems = [what for what, ours in (("program (with its target LM and adapter)", key),
                                        ("metric", evaluator.metric_key), ("examples", evaluator.examples_key))
                if expected[what.split()[0]] != ours]
    if problems:
        raise WorkerError(f"this worker's {', '.join(problems)} differ from the compile's (setup "
                          f"{spec['setup']} {spec['setup_args']}): run workers with the same code, package versions "
                          "and LM settings as the main compile; examples must survive a JSON round trip.")
