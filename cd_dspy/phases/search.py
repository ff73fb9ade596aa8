"""Phase 3a: an Optuna study searches for the rule subsets that score best on the search part of the valset.

One boolean parameter per concept; seeded TPE. Informative trials are enqueued first (no concepts = the
baseline, all concepts, all but one, each alone when the budget allows); exemplar-only concepts go in as a set of at
most `max_exemplars` (a subset with more is pruned unevaluated, at no cost) and are charged as one; after the study,
backward elimination from the best subset drops rules that do not earn their place. Every (prompt, example) score is
cached, so a repeated subset costs nothing and a resumed study repeats no finished work. Large
valsets are scored in minibatches with the running mean reported to Optuna's median pruner.
The search only ranks subsets: the decision is taken on data it never saw (`confirm.py`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from cd_dspy.core.evaluation import CachedEvaluator
from cd_dspy.core.result import Rule, Trial
from cd_dspy.core.usage import BudgetExhausted
from cd_dspy.phases.concepts import is_exemplar_only

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Selection:
    """What the study found: every trial, and the distinct scored subsets best first (search scores)."""

    trials: list[Trial]
    ranked: list[tuple[list[str], float]] = field(default_factory=list)
    baseline_score: float | None = None
    stopped_early: str | None = None
    rule_cost: float = 0.0  # points a subset pays per rule when ranked (one search example)
    exemplar_ids: frozenset[str] = frozenset()  # exemplar-only concepts: a set of them is charged as one
    primary: list[str] = field(default_factory=list)  # the subset fixed before any score: all, exemplars capped

    @property
    def best_score(self) -> float | None:
        return self.ranked[0][1] if self.ranked else None

    def score_of(self, rule_ids: Sequence[str]) -> float | None:
        """The search score of the subset `rule_ids` (None when it was not scored)."""
        return next((score for ids, score in self.ranked if ids == list(rule_ids)), None)

    def ranked_above(self, rule_ids: Sequence[str]) -> list[list[str]]:
        """The subsets the search ranks above `rule_ids` (all of them when it was not scored)."""
        order = [ids for ids, _ in self.ranked]
        return order[:order.index(list(rule_ids))] if list(rule_ids) in order else order

    def better_than_baseline(self, top_k: int) -> list[tuple[list[str], float]]:
        """The `top_k` best non-empty subsets whose search score, less their rules' cost, beats the baseline's."""
        if self.baseline_score is None:
            return []
        return [(ids, score) for ids, score in self.ranked
                if ids and score - self.rule_cost * cost_units(ids, self.exemplar_ids) > self.baseline_score][:top_k]


def cost_units(rule_ids: Sequence[str], exemplar_ids: frozenset[str] = frozenset()) -> int:
    """What a subset is charged for: one unit per rule, and one for its exemplar-only concepts together (exemplars
    work as a set: one alone rarely shows its effect, so each is not asked to earn its own place)."""
    rules = [i for i in rule_ids if i not in exemplar_ids]
    return len(rules) + (len(rules) < len(rule_ids))


def preference(score: float, rule_ids: Sequence[str], rule_cost: float = 0.0,
               exemplar_ids: frozenset[str] = frozenset()) -> tuple[float, int]:
    """Sort key of a scored subset: the score less `rule_cost` per unit (`cost_units`) first, and on ties fewer
    concepts.

    With `rule_cost` one search example's worth, a rule stays in a subset only when it earns more
    than one example on the search data: a rule with no real effect rarely does (it moves answers
    both ways), so noise rules do not hitch a ride on a helpful one."""
    return score - rule_cost * cost_units(rule_ids, exemplar_ids), -len(rule_ids)


def exemplar_ids(rules: Sequence[Rule]) -> frozenset[str]:
    """The ids of the exemplar-only concepts (searched and charged as a set)."""
    return frozenset(r.id for r in rules if is_exemplar_only(r))


def primary_subset(rules: Sequence[Rule], max_exemplars: int | None) -> list[str]:
    """The subset fixed before any score: every concept, less the exemplar-only ones beyond the first
    `max_exemplars` (None: no cap)."""
    exemplars = [r.id for r in rules if is_exemplar_only(r)][:max_exemplars]
    return [r.id for r in rules if not is_exemplar_only(r) or r.id in exemplars]


def no_search(rules: Sequence[Rule], max_exemplars: int | None) -> Selection:
    """The selection when the search is skipped: no trial, only the primary subset to test."""
    return Selection([], exemplar_ids=exemplar_ids(rules), primary=primary_subset(rules, max_exemplars))


def subset_of(params: dict, rules: Sequence[Rule]) -> list[str]:
    return [r.id for r in rules if params.get(r.id)]


def open_storage(storage: str | None) -> str | optuna.storages.BaseStorage | None:
    """An Optuna RDB URL as it is; a file path ending in `.log`: Optuna's journal storage (one machine, no server)."""
    if isinstance(storage, str) and storage.endswith(".log") and "://" not in storage:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    return storage


def delete_study(name: str, storage: str | None) -> None:
    """Delete the study `name` from `storage` if it is there (a fresh start with resume=False)."""
    if storage is None:
        return
    try:
        optuna.delete_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        pass


def fail_running_trials(study: optuna.Study, numbers: Iterable[int] | None = None) -> list[int]:
    """Mark FAILED those of the trials `numbers` (None: all) that are RUNNING, with Optuna's public `Study.tell`;
    a trial another process finished meanwhile is left as it is. Returns the numbers of the trials failed."""
    wanted = None if numbers is None else set(numbers)
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if wanted is None or t.number in wanted]
    for number in running:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return running


class RuleSelector:
    """Runs the study on the valset examples at `indices`; `evaluator(program, indices)` scores (0-1 scale)."""

    def __init__(self, program_with: Callable[[Sequence[Rule]], object], rules: Sequence[Rule],
                 evaluator: CachedEvaluator, *, indices: Sequence[int],
                 num_trials: int, seed: int, storage: str | None, study_name: str,
                 minibatch_size: int | None, on_trial: Callable[[Trial, float | None], None] | None = None,
                 refine: bool = True, study: optuna.Study | None = None, max_exemplars: int | None = None):
        self.program_with = program_with  # rules -> the program that runs with them
        self.rules = list(rules)
        self.exemplar_ids = exemplar_ids(self.rules)
        self.max_exemplars = max_exemplars  # None: no cap on the exemplar-only concepts in a subset
        self.evaluator = evaluator
        self.num_trials = num_trials
        self.seed = seed
        self.minibatch_size = minibatch_size
        self.on_trial = on_trial
        self.refine = refine
        self.best: float | None = None
        self.order = random.Random(seed).sample(list(indices), len(indices))
        self.rule_cost = 100.0 / max(1, len(self.order))
        self._asked: set[int] = set()  # the trials this process took to evaluate (`fail_interrupted`)
        if study is not None:  # a study opened by the caller (workers: `cd_dspy.scale.workers`)
            self.study = study
            return
        self.study = optuna.create_study(
            direction="maximize", storage=open_storage(storage), study_name=study_name, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        )
        # Without workers one process evaluates this study's trials: a RUNNING one was left by a killed compile
        # (its finished scores are in the cache). A study of workers comes in as `study`, untouched here.
        fail_running_trials(self.study)

    # -- the study -------------------------------------------------------------------------------
    def run(self) -> Selection:
        if not self._trials():
            self._enqueue_first_trials()
        stopped = None
        attempts = 0
        try:
            while attempts < 3 * self.num_trials:
                if len(self._scored()) >= min(self.num_trials, 2 ** len(self.rules)):
                    break  # enough distinct subsets (or every subset) scored
                attempts += self._step()
            if self.refine:
                self._refine()
        except BudgetExhausted as exc:
            stopped = str(exc)
            self.fail_interrupted()
            logger.warning("Select: stopped early, %s; keeping the best subset so far.", exc)
        return self._summary(stopped)

    def fail_interrupted(self) -> list[int]:
        """Mark FAILED the trials this process took and a stop (a BaseException such as `BudgetExhausted`,
        which Optuna's `optimize` does not record) left RUNNING; trials other processes (workers) run are
        theirs and are left alone. Returns the numbers of the trials failed."""
        return fail_running_trials(self.study, self._asked)

    def _tracked(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        """`objective`, noting each trial this process takes (for `fail_interrupted`)."""

        def run(trial: optuna.Trial) -> float:
            self._asked.add(trial.number)
            return objective(trial)

        return run

    def _refine(self) -> None:
        """Backward elimination from the best subset: drop each rule in turn (one enqueued trial each)
        and keep the smaller subset whenever `preference` ranks it at least as high (it may score up to one
        search example less); at most num_trials // 2 extra trials. Guards against rules that won by noise."""
        done = [t for t in self._trials() if t.user_attrs.get("enqueued") == "refine"]
        tried: set[tuple[str, ...]] = {tuple(subset_of(t.params, self.rules)) for t in done}
        budget = max(2, self.num_trials // 2)  # refinement adds at most this many trials, also across resumes
        while len(tried) < budget:
            best = self._best_complete()
            if best is None or len(best[1]) < 2:
                return
            score, ids = best
            smaller = [tuple(i for i in ids if i != drop) for drop in ids]
            todo = [s for s in smaller if s not in tried and s not in self._scored()]
            if not todo:
                return
            for subset in todo[: budget - len(tried)]:
                tried.add(subset)
                self._enqueue({r.id: int(r.id in subset) for r in self.rules}, "refine")
                self._run_enqueued()
            self._settle()
            if self._best_complete() == best:
                return

    def _scored(self) -> set[tuple[str, ...]]:
        return {tuple(subset_of(t.params, self.rules)) for t in self._complete()}

    def _best_complete(self) -> tuple[float, tuple[str, ...]] | None:
        """(score, rule ids) of the best complete trial by `preference`."""
        scored = [(t.value, tuple(subset_of(t.params, self.rules))) for t in self._complete()]
        return max(scored, key=lambda x: preference(*x, self.rule_cost, self.exemplar_ids)) if scored else None

    def over_cap(self, rule_ids: Iterable[str]) -> bool:
        """The subset holds more exemplar-only concepts than `max_exemplars`."""
        return self.max_exemplars is not None and len(self.exemplar_ids.intersection(rule_ids)) > self.max_exemplars

    def _enqueue_first_trials(self) -> None:
        """Baseline, all concepts (the exemplars up to the cap), then leave-one-out subsets (they expose harmful
        concepts), then single concepts (they expose helpful ones), as far as the trial budget allows."""
        ids = [r.id for r in self.rules]
        self._enqueue({i: 0 for i in ids}, "baseline")
        if not ids:
            return
        full = primary_subset(self.rules, self.max_exemplars)
        self._enqueue({i: int(i in full) for i in ids}, "all rules")
        if len(full) < 2:
            return
        room = self.num_trials - 2
        for rule_id in full[:max(0, room)]:
            self._enqueue({i: int(i in full and i != rule_id) for i in ids}, f"without {rule_id}")
        if room >= 2 * len(full):
            for rule_id in full:
                self._enqueue({i: int(i == rule_id) for i in ids}, rule_id)

    # -- how trials run (one process here; `workers.DistributedSelector` hands them to workers) ---
    def _enqueue(self, params: dict[str, int], why: str) -> None:
        self.study.enqueue_trial(params, user_attrs={"enqueued": why})

    def _step(self) -> int:
        """Run the next trial (an enqueued one, else one TPE proposes); the number of attempts it was."""
        self.study.optimize(self._tracked(self._objective), n_trials=1, catch=())
        return 1

    def _run_enqueued(self) -> None:
        """Run the trial just enqueued."""
        self.study.optimize(self._tracked(self._objective), n_trials=1, catch=())

    def _settle(self) -> None:
        """Wait until every enqueued trial has run (here they already have)."""

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _objective(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        chosen = [r for r in self.rules if trial.suggest_categorical(r.id, [0, 1])]
        if self.over_cap(r.id for r in chosen):  # more exemplars than the cap: pruned before any LM call
            self._notify(trial.number, chosen, None, "pruned", 0, started)
            raise optuna.TrialPruned(f"more than {self.max_exemplars} exemplars")
        program = self.program_with(chosen)
        prunable = "enqueued" not in trial.user_attrs and self.minibatch_size
        batches = self._batches() if prunable else [self.order]
        scores: list[float] = []
        for step, batch in enumerate(batches):
            scores += self.evaluator(program, batch)
            running = 100.0 * sum(scores) / len(scores)
            if len(batches) > 1:
                trial.report(running, step)
                if step < len(batches) - 1 and trial.should_prune():
                    self._notify(trial.number, chosen, None, "pruned", len(scores), started)
                    raise optuna.TrialPruned()
        score = 100.0 * sum(scores) / max(1, len(scores))
        self._notify(trial.number, chosen, score, "complete", len(scores), started)
        return score

    def _batches(self) -> list[list[int]]:
        size = self.minibatch_size or len(self.order)
        return [self.order[i:i + size] for i in range(0, len(self.order), size)]

    def _notify(self, number, chosen, score, state, n, started) -> None:
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        record = Trial(number, [r.id for r in chosen], score, state, n, round(time.perf_counter() - started, 3))
        logger.info("Select: trial %d %s rules=%s score=%s", number, state, record.rule_ids,
                    "-" if score is None else f"{score:.1f}")
        if self.on_trial:
            self.on_trial(record, self.best)

    # -- the outcome -----------------------------------------------------------------------------
    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._trials() if t.state == TrialState.COMPLETE]

    def _summary(self, stopped: str | None) -> Selection:
        trials = [Trial(t.number, subset_of(t.params, self.rules), t.value, t.state.name.lower(),
                        seconds=round(t.duration.total_seconds(), 3) if t.duration else 0.0)
                  for t in self._trials()]
        complete = [t for t in trials if t.state == "complete" and t.score is not None]
        baseline = next((t.score for t in complete if not t.rule_ids), None)
        best: dict[tuple[str, ...], float] = {}
        for t in complete:
            best[tuple(t.rule_ids)] = max(t.score, best.get(tuple(t.rule_ids), t.score))
        ranked = sorted(best.items(), key=lambda item: preference(item[1], item[0], self.rule_cost, self.exemplar_ids),
                        reverse=True)
        return Selection(trials, [(list(ids), score) for ids, score in ranked], baseline, stopped, self.rule_cost,
                         self.exemplar_ids, primary_subset(self.rules, self.max_exemplars))
