"""cd_dspy reaches Optuna and DSPy through their public APIs only.

A budget stop fails only the trials this process took (workers own theirs), collecting mistakes patches no
module of DSPy (even while it runs), and no private name of either library appears in the package unless
its line says why no public API serves.
"""

from __future__ import annotations

import re
from pathlib import Path

import dspy
import optuna
import pytest
from dspy.teleprompt import bootstrap_trace
from optuna.trial import TrialState

from cd_dspy.config import default_threads, in_process
from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.core.result import Rule
from cd_dspy.core.validation import check_examples
from cd_dspy.phases.collect import COLLECT_METADATA, NoProgressBar, collect_mistakes
from cd_dspy.scale.workers import PLANNED, SLOT, DistributedSelector, Workers
from cd_dspy.testing.simulated import answer_match

ROOT = Path(__file__).resolve().parent.parent
COT = "question -> answer: float"
N_TRAIN = 12


@pytest.mark.parametrize("workers", [False, True], ids=["one-process", "evaluate-in-main"])
def test_a_budget_stop_fails_only_the_trials_this_process_took(sim, tmp_path, workers):
    """While the compile scores its first search trial, a worker (a second Study on the same SQLite storage)
    takes the next one; the target cap then stops the compile inside its trial. Its own trial is failed, the
    worker's stays RUNNING: it is the worker's to finish."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url)
    taken: dict[str, int] = {}

    def metric(example, prediction, trace=None):
        names = [] if taken else optuna.get_all_study_names(storage)
        if names:  # the search has begun: a worker takes the next waiting trial and keeps it running
            taken["number"] = optuna.load_study(study_name=names[0], storage=storage).ask().number
        return answer_match(example, prediction, trace)

    extra = {"workers": Workers(setup="worker_setup:build", evaluate_in_main=True)} if workers else {}
    cd = sim.optimizer(metric=metric, storage=url, verify=False, num_trials=8, max_target_calls=N_TRAIN + 3,
                       **extra)
    cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset[:N_TRAIN], valset=sim.valset)
    assert "target call budget reached" in cd.result.stopped_early and "number" in taken

    [name] = optuna.get_all_study_names(storage)
    states = {t.number: t.state for t in optuna.load_study(study_name=name, storage=storage).get_trials()}
    assert states.pop(taken["number"]) == TrialState.RUNNING  # the worker's trial is left to the worker
    # the trial this process was scoring is failed (the others wait: planned, or handed back by `guarded`)
    assert [s for s in states.values() if s != TrialState.WAITING] == [TrialState.FAIL]


def test_collecting_mistakes_patches_no_module_of_dspy(sim, capsys):
    """The per-chunk progress bar of `bootstrap_trace_data` stays off, and `bootstrap_trace.Evaluate` is DSPy's
    own class throughout (seen from the metric, while the collection runs): nothing process-wide is patched."""
    original = bootstrap_trace.Evaluate
    seen = []

    def metric(example, prediction, trace=None):
        seen.append(bootstrap_trace.Evaluate)
        return answer_match(example, prediction, trace)

    program = dspy.ChainOfThought(COT)
    program.set_lm(sim.target)
    mistakes, scores = collect_mistakes(program, sim.trainset[:6], ScoredMetric(metric), num_threads=2,
                                        threshold=1.0)
    assert len(scores) == 6 and len(seen) == 6
    assert all(cls is original for cls in seen) and bootstrap_trace.Evaluate is original
    out = capsys.readouterr()
    assert "%|" not in out.out + out.err  # no tqdm bar
    assert not any(isinstance(c, NoProgressBar) for c in dspy.settings.get("callbacks", []))  # scoped to the call


def test_only_the_marked_evaluate_loses_its_progress_bar():
    quiet, shown = dspy.Evaluate(devset=[], display_progress=True), dspy.Evaluate(devset=[], display_progress=True)
    NoProgressBar().on_evaluate_start("a", quiet, {"callback_metadata": COLLECT_METADATA})
    NoProgressBar().on_evaluate_start("b", shown, {"callback_metadata": None})
    assert quiet.display_progress is False and shown.display_progress is True


def test_a_trial_failed_before_it_took_its_parameters_is_retried_with_the_planned_ones(tmp_path):
    """The main process keeps each planned trial's parameters itself (not in Optuna's internal system attrs)."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'study.db'}")
    rules = [Rule(id="r1", text="a", predictor="p"), Rule(id="r2", text="b", predictor="p")]
    planned = {"r1": 1, "r2": 0}
    study.enqueue_trial(planned, user_attrs={"enqueued": "tpe", SLOT: 0, PLANNED: planned})
    study.tell(study.ask(), state=TrialState.FAIL)  # found stale before it suggested anything: no params
    assert study.trials[0].params == {}
    DistributedSelector(lambda chosen: None, rules, None, indices=[0, 1], num_trials=4, seed=0, storage=None,
                        study_name="s", minibatch_size=None, study=study, workers=Workers(setup="m:f"),
                        worker_command="cd-dspy worker")
    retry = study.ask()
    assert {r.id: retry.suggest_categorical(r.id, [0, 1]) for r in rules} == planned
    assert retry.user_attrs[SLOT] == 0 and retry.user_attrs[PLANNED] == planned


def test_in_process_lms_are_told_by_their_public_engine(sim):
    remote = dspy.LM("openai/gpt-4o-mini", api_key="sk-test", engine="litellm")
    assert in_process(sim.target) and not in_process(remote) and not in_process(None)
    assert default_threads(remote, sim.teacher) == 1


@pytest.mark.parametrize("example", [dspy.Example(question="1+1?", answer=2),
                                     dspy.Example(question="1+1?", answer=2).with_inputs()],
                         ids=["never-marked", "marked-none"])
def test_examples_without_input_fields_are_named(example):
    with pytest.raises(ValueError, match=r"trainset\[0\] has no input fields.*with_inputs"):
        check_examples([example], "trainset")


PRIVATE = re.compile(r"\._storage|_trial_id|fixed_params|_engine_spec|_input_keys|bootstrap_trace\.Evaluate")


def test_no_private_optuna_or_dspy_name_in_the_package():
    """A private name may appear only on a line whose comment says why no public API serves."""
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted((ROOT / "cd_dspy").rglob("*.py"))
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if PRIVATE.search(line) and "no public API" not in line.partition("#")[2]]
    assert not hits, "private Optuna/DSPy names (use the public API, or say why none serves):\n" + "\n".join(hits)
