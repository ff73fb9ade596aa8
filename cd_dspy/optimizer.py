"""`ConceptDistillation`: the DSPy teleprompter that runs the four phases in order.

    trainset ─► collect (target) ─► mistakes ─► induce (teacher solves, explains) ─► candidate concepts
             ─► verify (target, each rule alone on its mistakes and on correct examples) ─► concepts
             ─► select (Optuna + target, search part of the valset; skipped on a valset too small to confirm
                 its picks) ─► best subsets
             ─► confirm (target, confirmation part + fresh training examples) ─► chosen concepts
             ─► integrate ─► compiled program

Every phase writes its output to `run_dir` as soon as it has it; a rerun with the same run_dir
resumes after the last finished phase (and, inside the study, after the last finished trial).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from cd_dspy.config import (
    AUTO_PRESETS,
    RESULT_SETTINGS,
    ConceptSettings,
    ConfirmationSettings,
    Preset,
    SearchSettings,
    VerificationSettings,
    default_threads,
    flat_settings,
)
from cd_dspy.core import keys, validation
from cd_dspy.core.evaluation import CachedEvaluator, ScoredMetric
from cd_dspy.core.failures import quiet_example_errors
from cd_dspy.core.progress import Progress, log_result_warning
from cd_dspy.core.result import ConceptDistillationResult, Mistake, Rule, Trial, format_score
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import Budget, BudgetExhausted, UsageMeter
from cd_dspy.estimate import estimate_spend
from cd_dspy.phases.collect import ARTIFACTS as COLLECT_ARTIFACTS
from cd_dspy.phases.collect import MISTAKES_FILE, collect_resumable, sample_mistakes
from cd_dspy.phases.concepts import is_exemplar_only
from cd_dspy.phases.confirm import (
    FreshTraining,
    confirm,
    fresh_training_examples,
    skipped_search_warning,
    small_sample_warning,
    split_valset,
)
from cd_dspy.phases.induce import ARTIFACTS as INDUCE_ARTIFACTS
from cd_dspy.phases.induce import RULES_FILE
from cd_dspy.phases.induce_concepts import InduceSettings, induce_concepts
from cd_dspy.phases.integrate import record_decision, save_program, with_rules
from cd_dspy.phases.refine import REFINED, REFINEMENTS_LOG, revise_rules
from cd_dspy.phases.rulebook import RULEBOOK_ORIGIN, load_rulebook
from cd_dspy.phases.search import RuleSelector, Selection, delete_study, no_search
from cd_dspy.phases.verify import VERIFICATION_LOG, checked, correct_sample, verify_rules
from cd_dspy.scale.verify_workers import verify_on_workers
from cd_dspy.scale.workers import check_workers, distributed_selector

logger = logging.getLogger("cd_dspy")
__all__ = ["AUTO_PRESETS", "PHASE_ARTIFACTS", "ConceptDistillation", "Preset", "default_threads"]


PHASE_ARTIFACTS = {"collect": COLLECT_ARTIFACTS, "induce": (*INDUCE_ARTIFACTS, REFINEMENTS_LOG),
                   "concepts": (RULES_FILE,)}


class ConceptDistillation(Teleprompter):
    """Distil a teacher LM's rules into the instructions of a program run by a cheaper target LM.

    Args:
        metric: `metric(example, prediction, trace=None)` -> bool/float, or
            `dspy.Prediction(score=..., feedback=...)` (the feedback is shown to the teacher).
        teacher_lm: the strong LM that solves and explains mistakes and writes rules (required).
        target_lm: the LM the compiled program will run on; default the program's own LM or
            `dspy.settings.lm`. When given, it is bound to the compiled program's predictors.
        auto: "light" | "medium" | "heavy" preset for max_mistakes / max_rules / num_trials.
        num_trials: Optuna trials of the concept-subset search (default: the preset's).
        carrier: what a concept carries to the target: "exemplars" (default: the teacher's metric-checked
            solutions of the target's mistakes, as demos; measured best on math-basic, docs/benchmarks.md),
            "rules" (instructions) or "both" (each rule with the exemplar of its source mistake).
        concepts, verification, search, confirmation: grouped settings (`cd_dspy.config.ConceptSettings`,
            `VerificationSettings`, `SearchSettings`, `ConfirmationSettings`); None: their defaults.
        budget: `Budget(max_target_calls=..., max_teacher_calls=..., max_tokens=..., max_cost_usd=...)`: hard caps.
        seed: seeds the splits, the samples and the search.
        num_threads: parallel LM calls; default DSPy's `num_threads`, or 1 when an LM runs in this
            process. Caps hold exactly and no call outlives `compile` with any number of threads.
        run_dir: where artifacts go (and resume comes from); None keeps nothing on disk.
        resume: reuse finished work found in run_dir (default True).
        progress: show a progress bar per phase.

    `grouped(**flat)` (`cd_dspy.config`) builds the groups from flat names such as `verify=False`.
    """

    def __init__(self, metric: Callable, *, teacher_lm: Any = None, target_lm: Any = None,
                 auto: str | None = "light", num_trials: int | None = None, carrier: str = "exemplars",
                 concepts: ConceptSettings | None = None, verification: VerificationSettings | None = None,
                 search: SearchSettings | None = None, confirmation: ConfirmationSettings | None = None,
                 budget: Budget | None = None, seed: int = 0, num_threads: int | None = None,
                 run_dir: str | os.PathLike | None = None, resume: bool = True, progress: bool = True):
        super().__init__()
        flat = flat_settings(concepts=concepts, verification=verification, search=search, confirmation=confirmation)
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget= takes a cd_dspy.Budget, got {type(budget).__name__}.")
        preset = validation.check_settings(metric=metric, teacher_lm=teacher_lm, auto=auto, seed=seed,
                                           num_trials=num_trials, max_mistakes=flat["max_mistakes"],
                                           max_rules=flat["max_rules"], valset_fraction=flat["valset_fraction"],
                                           num_threads=num_threads, minibatch_size=flat["minibatch_size"],
                                           storage=flat["storage"], presets=AUTO_PRESETS)
        validation.check_decision_settings(
            require_significance=flat["require_significance"], confirm_fraction=flat["confirm_fraction"],
            confirm_top_k=flat["confirm_top_k"], samples_per_mistake=flat["samples_per_mistake"],
            verify_correct=flat["verify_correct"], verify_max_sources=flat["verify_max_sources"], carrier=carrier,
            max_exemplars=flat["max_exemplars"], rounds=flat["rounds"])
        check_workers(flat["workers"], flat["storage"], flat["minibatch_size"])
        self.metric = metric
        self.teacher_lm = teacher_lm
        self.target_lm = target_lm
        self.auto = auto
        self.carrier = carrier
        # The phases read the resolved settings as flat attributes (presets applied).
        vars(self).update(flat)
        self.num_trials = num_trials if num_trials is not None else preset.num_trials
        self.max_mistakes = flat["max_mistakes"] if flat["max_mistakes"] is not None else preset.max_mistakes
        self.max_rules = flat["max_rules"] if flat["max_rules"] is not None else preset.max_rules
        self.num_threads = num_threads
        self.threads = num_threads or 1  # resolved per compile (default_threads)
        self.budget = budget or Budget()
        self.seed = seed
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.rulebook = load_rulebook(flat["rulebook"]) if flat["rulebook"] is not None else None
        self.result: ConceptDistillationResult | None = None

    def settings(self) -> dict[str, Any]:
        """The settings that shape the result (recorded in the result and the run directory)."""
        return {k: getattr(self, k) for k in RESULT_SETTINGS}

    # -- estimate --------------------------------------------------------------------------------
    def dry_run(self, program: dspy.Module, trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example] | None = None) -> dict[str, Any]:
        """Estimate what `compile` would spend (calls and tokens per role), without calling any LM."""
        validation.check_program(program)
        trainset, valset = self._split(trainset, valset)
        return estimate_spend(self, program, trainset, valset)

    # -- compile ---------------------------------------------------------------------------------
    def compile(self, student: dspy.Module, *, trainset: Sequence[dspy.Example], teacher: Any = None,
                valset: Sequence[dspy.Example] | None = None, **kwargs) -> dspy.Module:
        """Return a deep copy of `student` whose instructions hold the selected rules."""
        if kwargs:
            raise TypeError(f"compile() got unexpected arguments {sorted(kwargs)}.")
        if teacher is not None:  # DSPy's teacher= is a program elsewhere; here it may be the teacher LM
            if not isinstance(teacher, dspy.BaseLM):
                raise TypeError("compile(teacher=...) takes a teacher LM (dspy.LM); pass it as teacher_lm= instead.")
            self.teacher_lm = teacher
        validation.check_program(student)
        if self.rulebook is not None:  # pinned rules are part of the program (on a deep copy)
            student = self.rulebook.pin(student)
        trainset, valset = self._split(trainset, valset)
        target = validation.resolve_target_lm(student, self.target_lm, self.teacher_lm)  # raises or warns
        self.threads = self.num_threads or default_threads(target, self.teacher_lm)
        started = time.perf_counter()
        run = RunDir(self.run_dir)
        phase_keys = keys.phase_keys(self, self.program_with(student), trainset, valset)
        run.refresh(phase_keys, PHASE_ARTIFACTS, resume=self.resume)
        meter = UsageMeter(self.teacher_lm, self.budget)
        result = ConceptDistillationResult(n_train=len(trainset), n_val=len(valset), settings=self.settings())
        if run.exists("progress.json"):  # calls and phase times add up over the invocations of one run
            saved = ConceptDistillationResult.from_dict(run.read_json("progress.json"))
            meter.restore(saved.usage)
            result.phase_seconds = dict(saved.phase_seconds)
        base = student.deepcopy()  # the LM is bound only on the copies made from it (with_rules)
        progress = Progress(enabled=self.progress)
        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), meter], usage_tracker=meter), \
                quiet_example_errors():
            try:
                compiled = self._run_phases(base, trainset, valset, run, meter, result, progress,
                                            phase_keys["select"])
            finally:
                meter.close()  # no call of this compile is still running when it returns or raises
                progress.close()
        result.usage = meter.snapshot()
        result.phase_seconds["total"] = round(result.phase_seconds.get("total", 0.0) + time.perf_counter() - started, 3)
        run.write_json("progress.json", result.to_dict())  # the last checkpoint: a rerun restores every call
        run.write_json("result.json", result.to_dict())
        compiled.detailed_results = result  # the compile record travels with the program (as GEPA's does)
        save_program(compiled, run.own("program.json"))
        self.result = result
        logger.info("Concept Distillation: %s", result.message)
        return compiled

    def _run_phases(self, base, trainset, valset, run, meter, result, progress, select_key: str) -> dspy.Module:
        metric = ScoredMetric(self.metric)
        checkpoint = lambda: run.write_json("progress.json", {**result.to_dict(), "usage": {  # noqa: E731
            k: v.to_dict() for k, v in meter.snapshot().items()}})
        search, confirmation = split_valset(len(valset), result, seed=self.seed, confirm_fraction=self.confirm_fraction,
                                            alpha=self.require_significance, top_k=self.confirm_top_k)
        skipped = self.search_skipped(len(valset))
        for warning in result.warnings:  # up front when the confirmation part is too small
            log_result_warning(warning)  # logged once, never also a progress note (the CLI prints it at the end)
        try:
            with self._phase("collect", result, progress):
                mistakes, correct = self._collect(base, trainset, metric, run, result, meter, progress)
            progress.note(f"collect: {len(mistakes)} mistakes on {len(trainset)} training examples "
                          f"(train score {format_score(result.train_score)})")
            checkpoint()
            if not mistakes:
                result.message = (f"The target made no mistakes on the {len(trainset)} training examples "
                                  f"(threshold {self.mistake_threshold}); the program is returned unchanged.")
                return self.program_with(base)
            with self._phase("induce", result, progress):
                rules = self._induce(base, mistakes, trainset, metric, run, result, progress, bool(skipped))
                rules = [r for r in rules if r.origin != REFINED]  # a resumed run's revisions: verify redoes them
                rules = self.rulebook.merge(rules) if self.rulebook is not None else rules
            progress.note(f"induce: {len(rules)} concepts ({self.carrier}); the teacher solved {result.n_solved} of "
                          f"the {result.n_mistakes_used} mistakes given to it")
            checkpoint()
            if not rules:
                result.message = (f"The teacher solved {result.n_solved} of the {result.n_mistakes_used} mistakes "
                                  "given to it and no usable concept came of them; the program is returned unchanged.")
                return self.program_with(base)
            result.rules = rules
            if self.verify:
                with self._phase("verify", result, progress):
                    rules = self._verify(base, rules, mistakes, correct, trainset, metric, run, meter, progress)
                result.rules = rules
                checkpoint()
            candidates = [r for r in rules if r.verified or not self.verify]
            if self.verify:
                progress.note(f"verify: {len(candidates)} of {len(rules)} concepts go on (screened rules that fixed a "
                              "mistake and broke less; exemplars are tested as sets)")
            if not candidates:
                result.message = ("No candidate rule fixed the mistakes it came from without breaking as many "
                                  "correct training examples; the program is returned unchanged.")
                return self.program_with(base)
            with self._phase("select", result, progress):
                evaluator = CachedEvaluator(valset, metric, run_dir=run, meter=meter, num_threads=self.threads)
                if skipped:
                    result.warnings.append(skipped)
                    log_result_warning(skipped)
                    selection = no_search(candidates, self.max_exemplars)
                else:
                    selection = self._select(base, candidates, evaluator, search, run, select_key, result, progress,
                                             checkpoint)
            with self._phase("confirm", result, progress):
                training = self._fresh_training(mistakes, rules, selection, trainset, metric, run, meter, result)
                decision = confirm(selection, candidates, evaluator, confirmation,
                                   program_with=lambda chosen: self.program_with(base, chosen),
                                   top_k=self.confirm_top_k, alpha=self.require_significance,
                                   min_improvement=self.min_improvement, training=training, search=search)
        except BudgetExhausted as exc:
            result.stopped_early = meter.exhausted or str(exc)  # the cap that refused the call
            result.message = (f"Stopped early: {result.stopped_early}. No rules were selected; the program is "
                              "returned unchanged.")
            return self.program_with(base)
        return self.program_with(base, record_decision(result, rules, selection, decision))

    def _fresh_training(self, mistakes, rules, selection, trainset, metric, run: RunDir, meter,
                        result) -> FreshTraining | None:
        """The training examples the confirmation may add per tested subset; None with confirm_on_train off."""
        if not self.confirm_on_train:
            return None
        sampled = {m.id: m.example_index for m in self._sampled(mistakes)}
        training = FreshTraining(self._train_evaluator(trainset, metric, run, meter),
                                 lambda tested: fresh_training_examples(len(trainset), sampled, rules, tested))
        by_id = {r.id: r for r in rules}
        result.n_confirm_train = len(training.indices_for([by_id[i] for i in selection.primary]))
        result.min_detectable_gain, _ = small_sample_warning(result.n_confirm + result.n_confirm_train,
                                                            self.require_significance, self.confirm_top_k,
                                                            self.confirm_fraction)
        return training

    def _sampled(self, mistakes: Sequence[Mistake]) -> list[Mistake]:
        """The mistakes the teacher sees (induce) and the confirmation therefore leaves out: one seeded sample."""
        return sample_mistakes(mistakes, self.max_mistakes, self.seed)

    def _train_evaluator(self, trainset, metric, run: RunDir, meter) -> CachedEvaluator:
        return CachedEvaluator(trainset, metric, run_dir=run, meter=meter, num_threads=self.threads,
                               log_name=VERIFICATION_LOG)

    def _phase(self, name: str, result: ConceptDistillationResult, progress: Progress):
        return progress.phase(name, result.phase_seconds)

    # -- phases ----------------------------------------------------------------------------------
    def _collect(self, base, trainset, metric, run: RunDir, result, meter: UsageMeter,
                 progress) -> tuple[list[Mistake], list[int]]:
        """(mistakes, trainset indices the target got right); reused from run_dir when complete."""
        if run.exists(MISTAKES_FILE):
            saved = run.read_json(MISTAKES_FILE)
            mistakes, correct = [Mistake.from_dict(m) for m in saved["mistakes"]], saved.get("correct", [])
            result.train_score = saved["train_score"]
            logger.info("Collect: reusing %d mistakes from %s.", len(mistakes), run.file(MISTAKES_FILE))
        else:
            bar = progress.bar("collect mistakes", total=len(trainset))
            mistakes, result.train_score, correct, failed = collect_resumable(
                lambda: self.program_with(base), trainset, metric, run, meter, num_threads=self.threads,
                threshold=self.mistake_threshold, on_chunk=bar.update)
            bar.close()
            if not failed:  # with failed examples collect is not finished: a rerun retries just those
                run.write_json(MISTAKES_FILE, {"train_score": result.train_score, "correct": correct,
                                               "mistakes": [m.to_dict() for m in mistakes]})
        result.n_mistakes = len(mistakes)
        return mistakes, correct

    def _induce(self, base, mistakes, trainset, metric, run: RunDir, result, progress,
                search_skipped: bool) -> list[Rule]:
        used = self._sampled(mistakes)  # induce_concepts counts those given to the teacher
        # with no search only the first max_exemplars exemplars are ever tested: solve until they pass
        enough = self.max_exemplars if search_skipped and self.carrier == "exemplars" else None
        settings = InduceSettings(
            teacher_lm=self.teacher_lm, priming=self.priming, carrier=self.carrier, max_rules=self.max_rules,
            consolidate=self.consolidate, filter_specific=self.filter_specific_rules,
            samples_per_mistake=self.samples_per_mistake, retries=self.teacher_retries,
            threshold=self.mistake_threshold, threads=self.threads, enough=enough)
        return induce_concepts(base, used, trainset, metric, settings, run, result, progress)

    def _verify(self, base, rules, mistakes, correct, trainset, metric, run: RunDir, meter, progress) -> list[Rule]:
        """Fill in each rule's verification, refine the failed ones for `rounds` rounds, and return the rules with
        the revisions (resumable: every score and revision is logged as it comes)."""
        evaluator = self._train_evaluator(trainset, metric, run, meter)
        # a rulebook's free rules and exemplar-only concepts (they work as sets) go to the search unscreened
        own = [r for r in rules if r.origin != RULEBOOK_ORIGIN and not is_exemplar_only(r)]
        sample = correct_sample(correct, self.verify_correct, self.seed)
        if self.workers is not None and own:  # workers score every check; verify_rules then reads their scores
            verify_on_workers(self, base, own, checked(own, mistakes, sample, self.verify_max_sources), evaluator,
                              self.storage or run.sqlite_url("study.db"), progress)
        bar = progress.bar("verify rules", total=len(own))
        screen = functools.partial(verify_rules, mistakes=mistakes, correct=sample, evaluator=evaluator,
                                   program_with=lambda chosen: self.program_with(base, chosen),
                                   threshold=self.mistake_threshold, max_sources=self.verify_max_sources,
                                   on_rule=lambda rule: bar.update(1))
        screen(own)
        rules = list(rules)
        for _ in range(self.rounds):
            failed = [r for r in own if not r.verified]
            revised = revise_rules(failed, program=base, trainset=trainset, teacher_lm=self.teacher_lm,
                                   priming=self.priming, retries=self.teacher_retries, num_threads=self.threads,
                                   stored={r["key"]: r for r in run.read_jsonl(REFINEMENTS_LOG)},
                                   on_done=lambda record: run.append_jsonl(REFINEMENTS_LOG, record))
            known = {r.id for r in rules}
            own = [r for r in revised if r.id not in known]
            bar.total += len(own)
            screen(own)
            rules += own
        bar.close()
        run.write_json(RULES_FILE, [r.to_dict() for r in rules])
        return rules

    def _select(self, base, rules, evaluator: CachedEvaluator, search, run: RunDir, select_key: str, result,
                progress, checkpoint) -> Selection:
        storage = self.storage or run.sqlite_url("study.db")
        bar = progress.bar("search rule subsets", total=self.num_trials)

        def on_trial(trial: Trial, best: float | None) -> None:
            bar.update(1)
            bar.set_postfix_str(f"best on search part {best:.1f}" if best is not None else "")
            result.trials.append(trial)
            checkpoint()

        # one study per rule set and search part: a trial's parameters always name this study's rules
        scope = keys.digest([sorted(r.id for r in rules), search, select_key])[:10]
        study_name = f"{self.study_name}-{scope}"
        if not self.resume:
            delete_study(study_name, storage)
        if self.workers is not None:  # trials evaluated by worker processes that join the study
            selector = distributed_selector(self, base, rules, evaluator, search, storage=storage,
                                            study_name=study_name, on_trial=on_trial, progress=progress,
                                            max_exemplars=self.max_exemplars)
        else:
            selector = RuleSelector(lambda chosen: self.program_with(base, chosen), rules, evaluator, indices=search,
                                    num_trials=self.num_trials, seed=self.seed, storage=storage,
                                    study_name=study_name, minibatch_size=self.minibatch_size, on_trial=on_trial,
                                    max_exemplars=self.max_exemplars)
        selection = selector.run()
        bar.close()
        if selection.stopped_early:  # the selector failed the trial it was running; workers' trials stay theirs
            raise BudgetExhausted(selection.stopped_early)
        return selection

    # -- helpers ---------------------------------------------------------------------------------
    def search_skipped(self, n_val: int) -> str | None:
        """Why a valset of `n_val` examples gets no search (`confirm.skipped_search_warning`), or None; with workers
        the search always runs (they wait for it)."""
        return None if self.workers is not None else skipped_search_warning(
            n_val, self.require_significance, self.confirm_top_k, self.confirm_fraction, self.confirm_on_train)

    def program_with(self, base: dspy.Module, rules: Sequence[Rule] = ()) -> dspy.Module:
        """A copy of `base` with `rules` integrated and the target LM (if one was given) bound."""
        return with_rules(base, rules, lm=self.target_lm, conditional=self.conditional_rules)

    def _split(self, trainset, valset) -> tuple[list[dspy.Example], list[dspy.Example]]:
        return validation.split_examples(trainset, valset, seed=self.seed, valset_fraction=self.valset_fraction)
