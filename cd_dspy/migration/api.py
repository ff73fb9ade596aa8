"""`migrate`: can this pipeline move to a cheaper model, what is lost, what does it cost, and why.

Given a program, a *source* LM (today's model), a *target* LM (the cheaper one) and a teacher (default:
the source), `migrate` compiles the program for the target with Concept Distillation and scores three
programs on a held-out test split that neither the compile nor the selection touched: the source, the
target before CD and the target after CD. The report (`report.html`, `report.md`, `report.json` in the
run directory) gives their scores with 95% intervals, exact paired tests, the share of the source→target
gap closed, a per-example flip table, costs, the rules with their provenance, and a one-line verdict.

Statistics (`cd_dspy.core.stats`): scores with Wilson intervals (0/1 scores; Student's t otherwise); paired
differences with t intervals and the exact sign test, which is McNemar's exact test for 0/1 scores; the
share of the gap closed, (after - before) / (source - before), and the share of quality kept,
after / source, as ratios of paired means with Fieller's interval; break-even = compile cost / (source
cost per request - target cost per request).

Levers (`levers=`, default all): besides CD, `migrate` compares other ways to make the target do the job, on the
same test split (`levers`: the target as is, CD, teacher demonstrations, LoRA SFT where the target is a
local GGUF model, and their combination in BetterTogether's order); `lever_table` gives each its tests
against the source and the target as is (Holm over the levers), shares, costs and break-even, and names the lever
that keeps the most source quality per unit of cost, or says that none is distinguishable from the target as is.

Everything is resumable: the compile resumes from `run_dir/compile`, each other lever from `run_dir/levers/<name>`,
and each test example's record is stored as it is scored (`heldout.jsonl`), so a rerun repeats no finished call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from cd_dspy.config import default_threads, grouped
from cd_dspy.core import validation
from cd_dspy.core.failures import LMUnavailableError
from cd_dspy.core.heldout import ExampleRecord, HeldOutRunner, RunSummary
from cd_dspy.core.keys import lm_state, program_key
from cd_dspy.core.progress import Progress
from cd_dspy.core.run_dir import MIGRATE_FILES, RunDir
from cd_dspy.core.stats import Comparison, paired_difference, ratio_interval, score_summary
from cd_dspy.migration import levers as lever_names
from cd_dspy.migration.costs import USD, CompileClock, PromptCounts, load_prices, migration_costs
from cd_dspy.migration.lever_table import choose, judgement, lever_rows, lever_verdict, money, ratio_text
from cd_dspy.migration.levers import (
    FAILED,
    FINISHED,
    LEVER_FILES,
    RUN_OF,
    Lever,
    LeverContext,
    WeightsBackend,
    weights_backend,
)
from cd_dspy.migration.record import LABELS, RUNS, MigrationReport  # noqa: F401 (the public record)
from cd_dspy.optimizer import ConceptDistillation
from cd_dspy.phases.integrate import with_rules
from cd_dspy.phases.rulebook import export_rulebook, rule_provenance

logger = logging.getLogger("cd_dspy")
_ratio_text, _money = ratio_text, money  # the CD verdict's words, shared with the lever table


def migrate(program: dspy.Module, *, source_lm: dspy.BaseLM, target_lm: dspy.BaseLM, metric: Callable,
            trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None,
            testset: Sequence[dspy.Example], run_dir: str | os.PathLike, teacher_lm: dspy.BaseLM | None = None,
            prices: str | os.PathLike | dict | None = None, num_threads: int | None = None, progress: bool = True,
            levers: str | Sequence[str] | None = None, sft_backend: WeightsBackend | None = None,
            sft_train_kwargs: dict[str, Any] | None = None, **cd_settings: Any) -> MigrationReport:
    """Compile `program` for `target_lm` with each lever (CD among them) and judge the move from `source_lm` on
    `testset`.

    `teacher_lm` (CD's teacher) defaults to `source_lm`; `prices` is a price table ({model: [input $/Mtok, output
    $/Mtok]}, a dict or a JSON/YAML file) for models litellm has no price for; `levers` names the levers to compare
    (`levers.LEVERS`, a list or comma-separated; default: all, those that do not apply to the target listed
    as not applicable with the reason); `sft_backend` trains the target's weights for the SFT levers (default:
    `LocalLoraBackend` for a local GGUF target), with `sft_train_kwargs` (DSPy's train_kwargs); `cd_settings` go to
    `ConceptDistillation` (num_trials, max_mistakes, rulebook, seed, ...). Writes report.html, report.md,
    report.json, rulebook.yaml and plots/ to `run_dir`; returns the report. The user's program is unchanged.
    `run_dir` must be new, empty or an earlier migrate's: no file cd-dspy did not write is touched (RunDirError).
    """
    chosen = lever_names.parse_levers(levers)
    testset = _check_inputs(program, source_lm, target_lm, teacher_lm, trainset, valset, testset, run_dir)
    table = load_prices(prices)
    teacher = teacher_lm or source_lm
    run = RunDir(run_dir)
    run.check_free(MIGRATE_FILES | LEVER_FILES)  # before any LM call: a folder or file not ours is refused
    threads = num_threads or default_threads(source_lm, target_lm, teacher)
    cd = ConceptDistillation(**grouped(metric=metric, teacher_lm=teacher, target_lm=target_lm,
                                       run_dir=run.own("compile"), num_threads=num_threads, progress=progress,
                                       **cd_settings))
    backend, reason = ((sft_backend, "") if sft_backend is not None else weights_backend(target_lm)
                       if {"sft", "combined"} & set(chosen) else (None, "not asked for"))
    context = LeverContext(program, source_lm, target_lm, metric, trainset, run, threads, backend, reason,
                           sft_train_kwargs)
    built = {"target": Lever("target", FINISHED, program=with_rules(program, [], lm=target_lm))}
    clock = CompileClock(run, teacher)
    for name in chosen[1:]:
        built[name] = _compile_cd(cd, program, trainset, valset, clock) if name == "cd" else context.compile(name)
    result = cd.result if "cd" in built else None
    shown = Progress(enabled=progress)
    runner = HeldOutRunner(testset, metric, run_dir=run, num_threads=threads, progress=shown)
    counts, keys = PromptCounts(run), {"source": program_key(with_rules(program, [], lm=source_lm))}
    with counts.counting(keys["source"]):
        records = {"source": runner.run(with_rules(program, [], lm=source_lm), "source", role="source")}
    for name, lever in built.items():
        if lever.status != FINISHED:
            continue
        keys[RUN_OF[name]] = program_key(lever.program)
        try:
            with counts.counting(keys[RUN_OF[name]]):
                records[RUN_OF[name]] = runner.run(lever.program, LABELS[RUN_OF[name]], role="target")
        except LMUnavailableError as exc:
            if name == "target":
                raise
            lever.status, lever.reason = FAILED, f"held-out scoring failed: {exc}"[:1000]
            logger.warning("Lever %s: %s", name, lever.reason)
    for run_name, recs in records.items():
        shown.note(f"test: {LABELS[run_name]} {score_summary([r.score for r in recs])['score']:.1f} on "
                   f"{len(testset)} examples")
    models = {"source": source_lm.model, "target": target_lm.model, "teacher": teacher.model}
    costs = migration_costs(models=models, runs={k: counts.per_request(keys[k], RunSummary.of(v))
                                                 for k, v in records.items()},
                            compile_usage=result.usage if result else {},
                            compile_seconds=clock.seconds() if result else {}, table=table)
    unchanged = result is not None and program_key(built["cd"].program) == program_key(built["target"].program)
    report = build_report(run_dir=str(run_dir), models=models, testset=testset, records=records, costs=costs,
                          unchanged=unchanged, levers=built, table=table,
                          rules=rule_provenance(result, run.file("compile")) if result else [],
                          trials=[t.to_dict() for t in result.trials] if result else [], threshold=cd.mistake_threshold,
                          compile_info=_compile_info(result) if result else {})
    if result is not None:
        export_rulebook(run.file("compile"), run.file("rulebook.yaml"), result=result, all_rules=True,
                        learned={"source": models["source"], "target": models["target"], "teacher": models["teacher"]})
    from cd_dspy.migration.report import write_report

    write_report(report, run.path)
    logger.info("Migration: %s", report.verdict)
    return report


def _compile_cd(cd: ConceptDistillation, program: dspy.Module, trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example] | None, clock: CompileClock) -> Lever:
    """The CD lever: the compile, resumable in run_dir/compile. CD handles LM failures and budgets itself (it
    returns the best program so far); an error it raises stops the migration, as before levers."""
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), clock]):
        compiled = cd.compile(program, trainset=trainset, valset=valset)
    return Lever("cd", FINISHED, program=compiled, provenance={
        "rules": len(cd.result.selected_rules), "message": cd.result.message, "see": "Rules and their provenance"})


def _compile_info(result: Any) -> dict[str, Any]:
    return {"message": result.message, "warnings": result.warnings, "improved": result.improved,
            "n_train": result.n_train, "n_val": result.n_val, "n_search": result.n_search,
            "n_confirm": result.n_confirm, "baseline_score": result.baseline_score, "best_score": result.best_score,
            "comparison": result.comparison, "stopped_early": result.stopped_early}


def build_report(*, run_dir: str, models: dict[str, str], testset: Sequence[dspy.Example],
                 records: dict[str, list[ExampleRecord]], costs: dict[str, Any], rules: list[dict[str, Any]],
                 trials: list[dict[str, Any]], threshold: float, compile_info: dict[str, Any],
                 unchanged: bool = False, levers: dict[str, Lever] | None = None,
                 table: dict[str, tuple[float, float]] | None = None) -> MigrationReport:
    """The report of a migration from its per-example records (all statistics are computed here); `unchanged`:
    CD's program is the original one (no rule passed), so target after CD is target before by construction."""
    scores = {run: [r.score for r in recs] for run, recs in records.items()}
    summary = {run: score_summary(values) for run, values in scores.items()}
    flips = [_flip(i, example, records, threshold) for i, example in enumerate(testset)]
    levers = levers or {"target": Lever("target", FINISHED), "cd": Lever("cd", FINISHED)}
    rows = lever_rows(levers, scores, costs, table, flips)
    choice = choose(rows, scores)
    verdict, details = lever_verdict(rows, choice, costs, len(testset))
    unchanged_note, cd_view = None, {}
    if "target_after" in scores:
        source, before, after = scores["source"], scores["target_before"], scores["target_after"]
        vs_before, vs_source = paired_difference(after, before), paired_difference(after, source)
        gap = ratio_interval([a - b for a, b in zip(after, before, strict=True)],
                             [s - b for s, b in zip(source, before, strict=True)])
        kept = ratio_interval(after, source)
        if unchanged:
            verified = sum(bool(r.get("verified")) for r in rules)
            unchanged_note = (f"CD kept no rule ({len(rules)} proposed, {verified} passed verification, none kept by "
                              "the search and confirmation): the target's program is unchanged, so target after CD is "
                              "target before CD.")
        cd_verdict, cd_details = verdict_lines({r: summary[r] for r in RUNS}, kept.to_dict(), gap.to_dict(),
                                               vs_before, vs_source, costs, len(testset), unchanged_note)
        details += [cd_verdict, *cd_details]
        cd_view = {"after_vs_before": vs_before.to_dict(), "after_vs_source": vs_source.to_dict(),
                   "gap_closed": gap.to_dict(), "quality_kept": kept.to_dict()}
    verdict = (f"{unchanged_note} " if unchanged_note else "") + verdict
    return MigrationReport(run_dir=run_dir, models=models, n_test=len(testset), scores=summary,
                           after_vs_before=cd_view.get("after_vs_before", {}),
                           after_vs_source=cd_view.get("after_vs_source", {}),
                           gap_closed=cd_view.get("gap_closed", {}), quality_kept=cd_view.get("quality_kept", {}),
                           flips=flips, costs=costs, rules=rules, trials=trials, compile=compile_info, verdict=verdict,
                           details=details, levers=rows, choice=choice)


def _status(before: float, after: float, threshold: float) -> str:
    return ("fixed" if after > before else "broken" if after < before else
            "still wrong" if after < threshold else "still right")


def _flip(index: int, example: dspy.Example, records: dict[str, list[ExampleRecord]], threshold: float) -> dict:
    """One test example: each lever's flip from the target as is (`statuses`; `status` is CD's), scores, outputs."""
    before = records["target_before"][index].score
    statuses = {run: _status(before, recs[index].score, threshold) for run, recs in records.items()
                if run not in ("source", "target_before")}
    return {"index": index, "status": statuses.get("target_after"), "statuses": statuses,
            "inputs": dict(example.inputs()), "gold": dict(example.labels()),
            "scores": {run: recs[index].score for run, recs in records.items()},
            "outputs": {run: recs[index].outputs for run, recs in records.items()},
            "failed": {run: recs[index].failed for run, recs in records.items() if recs[index].failed}}


def verdict_lines(scores: dict[str, dict[str, float]], kept: dict[str, Any], gap: dict[str, Any],
                  vs_before: Comparison, vs_source: Comparison, costs: dict[str, Any], n: int,
                  unchanged_note: str | None = None) -> tuple[str, list[str]]:
    """The one-line verdict (quality kept, cost share, break-even, with intervals and tests) and detail lines;
    `unchanged_note` (CD kept no rule) leads the verdict and replaces the after-vs-before comparison."""
    unit, per = costs["unit"], costs["per_request"]
    after, source = scores["target_after"]["score"], scores["source"]["score"]
    quality = (f"Target after CD keeps {_ratio_text(kept)} of source quality ({after:.1f} vs {source:.1f} on {n} test "
               f"examples: {judgement(vs_source, 'the source', short=True)})")
    if not costs["measured"]:
        cost = "its cost per request was not measured (every request of a run was answered by DSPy's cache)"
    else:
        what = "cost" if unit == USD else "LM time"
        cost = (f"at {100 * costs['cost_ratio']:.0f}% of its {what} per request "
                f"({_money(per['target_after'], unit)} vs {_money(per['source'], unit)})"
                if costs["cost_ratio"] is not None else f"the source's {what} per request is 0")
        if unit != USD:
            cost += (f" — no price known for {', '.join(costs['missing_prices'])}, so cost is compared in "
                     "seconds of LM time per request")
    total = costs["compile"]["total"]
    if costs["break_even"] is not None:
        saved = per["source"] - per["target_after"]
        pays = (f"break-even after {costs['break_even']:,} requests (compile {_money(total, unit)} / "
                f"{_money(saved, unit)} saved per request)")
    elif costs["measured"]:
        pays = "it never breaks even: the target after CD is not cheaper per request than the source"
    else:
        pays = "break-even unknown"
    verdict = (f"{unchanged_note} " if unchanged_note else "") + f"{quality}, {cost}; {pays}."
    same = ("the same program, so the same answers by construction (the zero difference and [0, 0] intervals "
            "below measure nothing)")
    versus_before = same if unchanged_note else judgement(vs_before, "the target before CD")
    details = [f"Target after CD vs source: {judgement(vs_source, 'the source')}.",
               f"Target after CD vs target before CD: {versus_before}.",
               f"Share of the source→target gap closed: {_ratio_text(gap)} (Fieller's interval on paired examples).",
               _compile_line(costs, n),
               "Scores [95% CI]: " + "; ".join(f"{LABELS[r]} {s['score']:.1f} [{s['low']:.1f}, {s['high']:.1f}]"
                                                for r, s in scores.items()) + "."]
    return verdict, details


def _compile_line(costs: dict[str, Any], n: int) -> str:
    teacher, target, runs = costs["compile"]["teacher"], costs["compile"]["target"], costs["runs"]
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in (teacher, target))
    return (f"Compile: {teacher['calls']} teacher and {target['calls']} target calls that reached the model, "
            f"{tokens:,} tokens, {_money(costs['compile']['total'], costs['unit'])}; cost per request measured on "
            f"{runs['source']['measured']} (source) and {runs['target_after']['measured']} (target after CD) of {n} "
            "requests (the others were answered by DSPy's cache or failed).")


def _check_inputs(program, source_lm, target_lm, teacher_lm, trainset, valset, testset, run_dir) -> list[dspy.Example]:
    validation.check_program(program)
    for name, lm in (("source_lm", source_lm), ("target_lm", target_lm), ("teacher_lm", teacher_lm)):
        if (lm is not None or name != "teacher_lm") and not isinstance(lm, dspy.BaseLM):
            raise TypeError(f"{name} must be a dspy.LM (or another dspy.BaseLM), got {type(lm).__name__}.")
    if source_lm is target_lm or lm_state(source_lm) == lm_state(target_lm):
        raise ValueError(f"source_lm and target_lm are the same LM ({source_lm.model}): a migration moves the "
                         "program to another, cheaper model; pass that model as target_lm.")
    if all(p.lm is not None for _, p in program.named_predictors()):
        raise ValueError("every predictor of the program has its own LM, so source_lm and target_lm would change "
                         "nothing; unbind them with program.set_lm(None) (a step may keep its own LM).")
    if run_dir is None:
        raise ValueError("migrate needs a run_dir: the compile, the test records and the report are kept there "
                         "(a rerun resumes from it).")
    if testset is not None and not isinstance(testset, str | bytes) and len(testset) == 0:
        raise ValueError("testset is empty: a migration is judged on held-out examples that neither the compile "
                         "nor the selection sees; pass a non-empty testset disjoint from trainset and valset.")
    testset = validation.check_examples(testset, "testset")
    seen = {validation._example_key(e) for e in [*validation.check_examples(trainset, "trainset"), *(valset or [])]}
    shared = sum(validation._example_key(e) in seen for e in testset)
    if shared:
        raise ValueError(f"{shared} of {len(testset)} testset examples are also in the trainset or valset; the test "
                         "must be held out from the compile and the selection: pass disjoint splits.")
    return testset
