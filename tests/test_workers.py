"""Scale-out: worker processes evaluate one rule search through Optuna's RDB storage (cd_dspy.scale.workers).

"Equal to a single-process run" means: the main process plans every trial (first trials, TPE rounds of
a fixed size from the finished trials in planned order, backward elimination), so the same trials are
run whether one process evaluates them (`Workers(evaluate_in_main=True)`, no worker, SQLite) or three
worker processes do (PostgreSQL); the same trials give the same scores (cached per prompt and example),
the same ranked subsets and the same confirmation decision. The tests compare all of these.

The PostgreSQL tests need a server: `.ci/run` starts one (`.ci/postgres`) and exports its URL as
CD_DSPY_TEST_POSTGRES_URL; without it they are skipped with a NOT TESTED warning.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path

import dspy
import optuna
import pytest
from conftest import SimWorld
from kill_child import logged_calls

from cd_dspy.core.evaluation import CachedEvaluator, ScoredMetric
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import UsageMeter
from cd_dspy.scale.shared_store import ScoreStore
from cd_dspy.scale.worker import run_worker
from cd_dspy.scale.workers import SLOT, WorkerError, Workers, guarded, rdb_storage, run_one
from cd_dspy.testing.local_workers import start_local_workers
from cd_dspy.testing.simulated import answer_match

TESTS = Path(__file__).parent
POSTGRES_ENV = "CD_DSPY_TEST_POSTGRES_URL"
SETTINGS = {"verify": False, "num_trials": 10}  # 5 candidate rules: 7 first trials, a TPE round, elimination


def fresh_world(tmp_path: Path) -> tuple[SimWorld, str, Path]:
    """A simulated world, a study name no other test uses, and the file the workers log their calls to."""
    return SimWorld(tmp_path), f"cdtest-{uuid.uuid4().hex[:8]}", tmp_path / "calls.log"


def compile_sim(sim: SimWorld, **settings):
    cd = sim.optimizer(resume=False, **{**SETTINGS, **settings})
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    return cd.result


def outcome(result) -> dict:
    """What must not depend on who evaluated the trials (trial numbers and timings may)."""
    return {"trials": [(t.rule_ids, t.score, t.state) for t in result.trials],
            "selected": result.selected_rule_ids, "baseline": result.baseline_score, "best": result.best_score,
            "search": (result.search_baseline_score, result.search_best_score), "candidates": result.candidates}


def verdicts(result) -> list:
    return [(r.id, r.verification) for r in result.rules]


def start_workers(tmp: Path, storage: str, study: str, n: int, log: Path, hang: int | None = None) -> list:
    """`n` `cd-dspy worker` processes (the first hangs at its `hang`-th call), each looking for the study."""
    envs = [{"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
            for _ in range(n)]
    if hang is not None:
        envs[0].update(CD_DSPY_TEST_HANG=str(hang), CD_DSPY_TEST_MARKER=str(tmp / "marker"))
    return start_local_workers(storage, study, n, tmp, envs=envs)


def finish_workers(procs: list, killed: int | None = None) -> list[int]:
    """Each worker's trial count (from its last line); every worker but `killed` ends by itself with 0."""
    counts = []
    for i, (proc, out) in enumerate(procs):
        code = proc.wait(timeout=120)
        if i == killed:
            assert code == -signal.SIGKILL
            continue
        assert code == 0, out.read_text()[-3000:]
        counts.append(int(out.read_text().strip().splitlines()[-1].split()[1]))
    return counts


def workers_for(log: Path, **settings) -> Workers:
    return Workers(setup="worker_setup:build", setup_args={"latency": 0.05, "log": str(log)}, heartbeat_interval=1,
                   grace_period=3, wait_timeout=120, **settings)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run: the main process plans and evaluates every trial itself, on SQLite."""
    tmp = tmp_path_factory.mktemp("reference")
    sim = SimWorld(tmp)
    log = tmp / "calls.log"
    result = compile_sim(sim, storage=f"sqlite:///{tmp / 'study.db'}",
                         workers=Workers(setup="worker_setup:build", evaluate_in_main=True))
    assert not log.exists()  # the main's own target did the work: no worker was involved
    return result


@pytest.fixture(scope="module")
def reference_verify(tmp_path_factory):
    """With verification: the main process evaluates the verify study's trials and the search's itself."""
    tmp = tmp_path_factory.mktemp("reference_verify")
    result = compile_sim(SimWorld(tmp), verify=True, storage=f"sqlite:///{tmp / 'study.db'}",
                         workers=Workers(setup="worker_setup:build", evaluate_in_main=True))
    plain = compile_sim(SimWorld(tmp / "plain"), verify=True)  # no workers at all: verify.verify_rules alone
    assert verdicts(result) == verdicts(plain) and any(r.verified for r in result.rules)
    assert not all(r.verified for r in result.rules)  # some rules are dropped
    return result


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    why = None
    if not url:
        why = f"{POSTGRES_ENV} is not set (bash .ci/postgres starts a local server and prints the URL to export)"
    else:
        try:
            ScoreStore(url).close()
        except Exception as exc:  # noqa: BLE001
            why = f"no PostgreSQL server answers at {POSTGRES_ENV} ({type(exc).__name__}: {exc})"
    if why:
        msg = f"NOT TESTED: scale-out on PostgreSQL: {why}"
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    return url


def test_reference_finds_the_helpful_rules(reference):
    from cd_dspy.testing.simulated import HELPFUL_RULES

    assert reference.improved and reference.best_score == 100.0
    assert sorted(r.text for r in reference.rules if r.selected) == sorted(HELPFUL_RULES.values())
    assert len(reference.trials) >= SETTINGS["num_trials"]


def test_three_postgres_workers_equal_one_process(reference, postgres_url, tmp_path):
    sim, study, log = fresh_world(tmp_path)
    procs = start_workers(tmp_path, postgres_url, study, 3, log)
    result = compile_sim(sim, storage=postgres_url, study_name=study, workers=workers_for(log))
    counts = finish_workers(procs)
    assert outcome(result) == outcome(reference)
    assert all(counts) and sum(counts) >= len(result.trials)  # all three worked on the search
    started = Counter(logged_calls(log, "start"))
    assert started and max(started.values()) == 1  # no (prompt, example) pair was paid twice
    distinct = {tuple(t.rule_ids) for t in result.trials}
    assert len(started) == len(distinct) * result.n_search  # ...and none was skipped
    assert result.usage["target"].calls == reference.usage["target"].calls  # the workers' calls are counted
    print(f"\n[workers] 3 PostgreSQL workers ran {counts} trials; {len(started)} (prompt, example) pairs, each paid "
          f"once; selected {result.selected_rule_ids}, confirmation {result.baseline_score} -> {result.best_score}, "
          "as in one process")


def test_killed_postgres_worker_loses_nothing(reference, postgres_url, tmp_path):
    """SIGKILL a worker inside the 5th call of its first trial: Optuna's heartbeat finds the trial stale, the
    retry callback re-enqueues it, another worker finishes it, paying only for the examples not yet scored."""
    sim, study, log = fresh_world(tmp_path)
    procs = start_workers(tmp_path, postgres_url, study, 3, log, hang=5)
    killed: dict = {}
    killer = kill_when_marked(tmp_path, procs[0][0], killed)
    result = compile_sim(sim, storage=postgres_url, study_name=study, workers=workers_for(log))
    killer.join()
    assert "key" in killed, "the worker never reached its kill point"
    finish_workers(procs, killed=0)
    assert outcome(result) == outcome(reference)

    [name] = [n for n in optuna.get_all_study_names(postgres_url) if n.startswith(f"{study}-")]
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = [t for t in trials
                   if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number]
    assert [t.state for t in retries] == [optuna.trial.TrialState.COMPLETE] and retries[0].params == failed[0].params

    started, ended = Counter(logged_calls(log, "start")), Counter(logged_calls(log, "end"))
    assert {k for k, n in started.items() if n > 1} == {killed["key"]}  # only the call in flight was redone
    assert started[killed["key"]] == 2 and max(ended.values()) == 1 and set(ended) == set(started)
    distinct = {tuple(t.rule_ids) for t in result.trials}
    assert len(started) == len(distinct) * result.n_search
    print(f"\n[workers] killed a worker inside a call of trial {failed[0].number}; Optuna retried it as trial "
          f"{retries[0].number}, which paid only the call in flight again; result as in one process")


def test_two_sqlite_workers_on_one_machine_equal_one_process(reference, tmp_path):
    sim, study, log = fresh_world(tmp_path)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = start_workers(tmp_path, storage, study, 2, log)
    result = compile_sim(sim, storage=storage, study_name=study, workers=workers_for(log))
    counts = finish_workers(procs)
    assert outcome(result) == outcome(reference)
    assert all(counts)
    # no pays-once check here: SQLite has no row locks, so two workers may now and then take the same trial (the
    # second to finish moves on: workers.run_one, test_a_trial_another_process_finished_first_is_left_to_it);
    # PostgreSQL's row lock rules that out (test_three_postgres_workers_equal_one_process)


@pytest.mark.parametrize("state", [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL])
def test_a_trial_another_process_finished_first_is_left_to_it(tmp_path, state):
    """The race behind SQLite's flakiness, made certain: while this worker evaluates its trial, another process
    completes it (a second worker took it too) or fails it (found stale). This worker moves on (run_one is False)
    and the other's outcome stands; an error of the objective itself still propagates."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=rdb_storage(url, 1, 3, 0), sampler=optuna.samplers.RandomSampler())
    other = optuna.load_study(study_name=study.study_name, storage=url)  # the other process's connection
    study.enqueue_trial({"x": 1}, user_attrs={SLOT: 0})

    def finished_elsewhere(trial: optuna.Trial) -> float:
        trial.suggest_categorical("x", [0, 1])
        values = [50.0] if state == optuna.trial.TrialState.COMPLETE else None
        other.tell(trial.number, values, state=state)
        return 42.0

    assert run_one(study, guarded(finished_elsewhere)) is False
    [trial] = study.get_trials()
    assert trial.state == state and trial.value == (50.0 if trial.values else None)

    def broken(trial: optuna.Trial) -> float:
        raise RuntimeError("the metric failed")

    study.enqueue_trial({"x": 0}, user_attrs={SLOT: 1})
    with pytest.raises(RuntimeError, match="the metric failed"):
        run_one(study, guarded(broken))


def test_journal_storage_serves_the_single_process_search(sim, tmp_path):
    journal = tmp_path / "study.log"
    result = compile_sim(sim, storage=str(journal))
    assert result.improved and journal.exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    [name] = optuna.get_all_study_names(storage)
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == len(result.trials)


def test_shared_scores_are_paid_once_across_evaluators(sim, tmp_path):
    """Two evaluators (two workers) on one store: the second reads the first's scores and calls no LM."""
    store = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    program = dspy.ChainOfThought("question -> answer: float")
    program.set_lm(sim.target)

    def evaluator() -> CachedEvaluator:
        return CachedEvaluator(sim.valset, ScoredMetric(answer_match), run_dir=RunDir(None), meter=UsageMeter(),
                               num_threads=1, shared=store)

    first = evaluator()(program, [0, 1, 2, 3])
    calls = sim.target_engine.calls
    assert calls == 4
    assert evaluator()(program, [0, 1, 2, 3]) == first and sim.target_engine.calls == calls
    evaluator()(program, [3, 4])  # only the new example is paid
    assert sim.target_engine.calls == calls + 1
    assert store.forget(evaluator().examples_key) == 5
    evaluator()(program, [0])
    assert sim.target_engine.calls == calls + 2


def test_bad_worker_settings_are_named(sim, tmp_path):
    with pytest.raises(ValueError, match="package.module:function"):
        Workers(setup="build")
    with pytest.raises(ValueError, match="grace_period"):
        Workers(setup="a:b", heartbeat_interval=5, grace_period=5)
    with pytest.raises(TypeError, match="Workers"):
        sim.optimizer(workers="yes", storage="sqlite:///x.db")
    with pytest.raises(ValueError, match="journal storage has none"):
        sim.optimizer(workers=Workers(setup="a:b"), storage=str(tmp_path / "study.log"))
    with pytest.raises(ValueError, match="minibatch_size cannot be combined"):
        sim.optimizer(workers=Workers(setup="a:b"), minibatch_size=5)
    with pytest.raises(ValueError, match="RDB storage URL"):
        run_worker("study.db", "x")
    with pytest.raises(WorkerError, match="no study named 'nothing'"):
        run_worker(f"sqlite:///{tmp_path / 'empty.db'}", "nothing", wait=0.3)


def test_worker_command_reports_a_missing_study(tmp_path, capsys):
    from cd_dspy.cli.main import main

    assert main(["worker", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--study", "none", "--wait", "0.2"]) == 2
    assert "no study named 'none'" in capsys.readouterr().err


def test_a_worker_with_another_program_refuses(tmp_path):
    from cd_dspy.scale.worker import _check_rebuild

    evaluator = CachedEvaluator(SimWorld(tmp_path).valset, ScoredMetric(answer_match), run_dir=RunDir(None),
                                meter=UsageMeter(), num_threads=1)
    spec = {"setup": "m:f", "setup_args": {}, "keys": {"program": "other", "metric": evaluator.metric_key,
                                                        "examples": evaluator.examples_key}}
    with pytest.raises(WorkerError, match="program .* differ from the compile's"):
        _check_rebuild(spec, "mine", evaluator)


def test_cli_compile_with_workers_and_a_worker_process(tmp_path, capsys):
    """`cd-dspy compile --workers` publishes the built-in task's setup; `cd-dspy worker` rebuilds it and works."""
    from cd_dspy.cli.main import main

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    procs = start_local_workers(storage, "concept-distillation", 1, tmp_path, wait=60)
    assert main(["compile", "--task", "simulated", "--target", "simulated-target", "--teacher", "simulated-teacher",
                 "--train", "12", "--val", "40", "--test", "0", "--trials", "6", "--run-dir", str(tmp_path / "run"),
                 "--storage", storage, "--workers", "--quiet", "--carrier", "rules"]) == 0
    [trials] = finish_workers(procs)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    # the worker verified every candidate rule (one trial each), then evaluated every search trial
    assert len(result["trials"]) >= 4 and len(result["trials"]) + len(result["rules"]) == trials and result["improved"]
    assert "concepts selected: 3 of" in capsys.readouterr().out


def test_a_worker_error_stops_the_compile_and_a_rerun_finishes(reference, tmp_path):
    """A worker whose target is down fails its trial with the reason; the compile stops with a WorkerError naming
    it; rerun with a healthy worker, the failed trial is tried again and the result is the single-process one."""
    sim, study, log = fresh_world(tmp_path)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    broken = start_local_workers(storage, study, 1, tmp_path, envs=[{
        "PYTHONPATH": str(TESTS), "CD_DSPY_TEST_BROKEN": "1"}])
    with pytest.raises(WorkerError, match="a worker failed on trial .*LMUnavailableError"):
        compile_sim(sim, storage=storage, study_name=study, workers=workers_for(log))
    assert broken[0][0].wait(timeout=60) != 0  # the worker stops too, loudly
    procs = start_workers(tmp_path, storage, study, 1, log)
    cd = sim.optimizer(**SETTINGS, storage=storage, study_name=study, workers=workers_for(log))  # resume
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    finish_workers(procs)
    assert outcome(cd.result) == outcome(reference)


def kill_when_marked(tmp: Path, proc, killed: dict) -> threading.Thread:
    """A thread that SIGKILLs `proc` once its worker wrote the marker (inside its hanging call)."""
    marker = tmp / "marker"

    def kill_at_marker() -> None:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            killed["key"] = marker.read_text().split()[1]
            os.kill(proc.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill_at_marker)
    thread.start()
    return thread


@pytest.mark.parametrize("n, kill", [(3, False), (2, True)], ids=["three-workers", "a-worker-killed"])
def test_postgres_workers_verify_as_one_process(reference_verify, postgres_url, tmp_path, n, kill):
    """Verification on workers (cd_dspy.scale.verify_workers): the same verdicts, trials and selected rules as one
    process, each (prompt, example) pair paid once; a worker killed inside a verify trial loses nothing."""
    sim, study, log = fresh_world(tmp_path)
    procs = start_workers(tmp_path, postgres_url, study, n, log, hang=5 if kill else None)
    killed: dict = {}
    killer = kill_when_marked(tmp_path, procs[0][0], killed) if kill else None
    result = compile_sim(sim, verify=True, storage=postgres_url, study_name=study, workers=workers_for(log))
    if killer:
        killer.join()
        assert "key" in killed, "the worker never reached its kill point"
    finish_workers(procs, killed=0 if kill else None)
    assert verdicts(result) == verdicts(reference_verify)
    assert outcome(result) == outcome(reference_verify)
    started, ended = Counter(logged_calls(log, "start")), Counter(logged_calls(log, "end"))
    assert {k for k, c in started.items() if c > 1} == ({killed["key"]} if kill else set())
    assert max(ended.values()) == 1 and set(ended) == set(started)  # each pair paid (finished) once
    checks = sum(len(r.verification["checked_mistakes"]) + len(r.verification["checked_correct"])
                 for r in result.rules)
    distinct = {tuple(t.rule_ids) for t in result.trials}
    assert len(started) == checks + len(distinct) * result.n_search  # verify + search, nothing skipped
    [name] = [s for s in optuna.get_all_study_names(postgres_url) if s.startswith(f"{study}-verify-")]
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in trials) == int(kill)
    if not kill:  # a dead worker reports no usage
        assert result.usage["target"].calls == reference_verify.usage["target"].calls
