"""The `cd-dspy` command: compile, worker, evaluate, models, report.

    cd-dspy compile            # the main job: math-basic, 0.5B target, 1.5B teacher (see the README for its time)
    cd-dspy evaluate --task math --load runs/math/program.json --lm qwen2.5-coder-0.5b --n 20
    cd-dspy compile --task simulated --target simulated-target --teacher simulated-teacher --storage URL --workers
    cd-dspy worker --storage URL --study concept-distillation     # on each machine, during that compile
    cd-dspy models
    cd-dspy report runs/math
    cd-dspy migrate --task math-basic --source qwen2.5-coder-1.5b --target qwen2.5-coder-0.5b --run-dir runs/mig
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cd_dspy.cli.common import add_cd_arguments, cd_settings, console_logging, failures_line
from cd_dspy.config import grouped
from cd_dspy.core.loading import (
    DEFAULT_TARGET,
    DEFAULT_TEACHER,
    InputError,
    adapter_context,
    chosen_adapter,
    data_arguments,
    load_task_and_splits,
    make_program,
    resolve_lm,
)
from cd_dspy.core.scoring import score_examples

if TYPE_CHECKING:
    from cd_dspy.core.stats import Comparison

# --- commands ---------------------------------------------------------------------------------

def cmd_compile(args) -> int:
    from cd_dspy import ConceptDistillation
    from cd_dspy.core.report import render_report
    from cd_dspy.core.run_dir import RunDir
    from cd_dspy.core.stats import paired_difference, score_interval

    task, splits, metric = load_task_and_splits(args)
    target = resolve_lm(args.target, "target", args.target_api_base)
    teacher = resolve_lm(args.teacher, "teacher", args.teacher_api_base)
    program = make_program(args, task)
    run_dir = Path(args.run_dir or f"runs/{task.name}")
    workers = None
    if args.workers:  # each worker rebuilds the program, metric and target LM from these (cd_dspy.scale.worker)
        from cd_dspy.scale.workers import Workers

        workers = Workers("cd_dspy.scale.worker:task_setup", {
            "task": task.name, "target": args.target, "program": args.program,
            "target_api_base": args.target_api_base, "metric": args.metric})
    optimizer = ConceptDistillation(**grouped(
        metric=metric, teacher_lm=teacher, target_lm=target, seed=args.seed, run_dir=run_dir,
        num_threads=args.threads, resume=not args.fresh, progress=not args.quiet, storage=args.storage,
        workers=workers, **cd_settings(args)))
    print(f"cd-dspy: task {task.name}: {len(splits['train'])} train / {len(splits['val'])} val / "
          f"{len(splits['test'])} test; target {args.target}, teacher {args.teacher}; run dir {run_dir}",
          file=sys.stderr)
    started = time.perf_counter()
    compiled = optimizer.compile(program, trainset=splits["train"], valset=splits["val"] or None)
    result = optimizer.result
    from cd_dspy.core.result import format_score

    if result.baseline_score is not None:  # the confirmation step ran
        fresh = f" + {result.n_confirm_train} fresh training examples" if result.n_confirm_train else ""
        tested = result.n_decided
        where = (f"{tested} examples, see below" if tested else
                 f"{result.n_confirm} validation examples the search never saw{fresh}")
        lines = [f"confirmation score ({where}): baseline "
                 f"{format_score(result.baseline_score)} -> compiled {format_score(result.best_score)}",
                 f"search score ({result.n_search} examples, the optimistic best of the search): baseline "
                 f"{format_score(result.search_baseline_score)} -> best {format_score(result.search_best_score)}"
                 if result.trials else "search: skipped (too few confirmation examples for its picks, see below)"]
    else:
        lines = ["validation: not used (the compile ended before the search; see below)"]
    lines.append(f"concepts selected: {len(result.selected_rule_ids)} of {len(result.rules)}  ({result.message})")
    verified = [r for r in result.rules if r.verification]
    if verified:
        lines.append(f"verification: {sum(r.verified for r in verified)} of {len(verified)} rules kept; "
                     f"{sum(len(r.verification['fixed']) for r in verified)} source mistakes fixed, "
                     f"{sum(len(r.verification['broken']) for r in verified)} correct examples broken in all")
    lines += [f"warning: {warning}" for warning in result.warnings]
    if splits["test"]:
        baseline_program = make_program(args, task)
        baseline_program.set_lm(target)
        runs = {name: score_examples(program_, splits["test"], metric, args.threads, run_dir=run_dir, name=name)
                for name, program_ in (("before", baseline_program), ("after", compiled))}  # resumable
        before, after = runs["before"].scores, runs["after"].scores
        comparison = paired_difference(after, before)
        low, high = score_interval(before), score_interval(after)
        lines.append(f"held-out test ({comparison.n} examples): before {comparison.before:.1f} [95% CI {low[0]:.1f}, "
                     f"{low[1]:.1f}] -> after {comparison.after:.1f} [95% CI {high[0]:.1f}, {high[1]:.1f}]; "
                     f"difference {comparison.difference:+.1f} [95% CI {comparison.low:+.1f}, {comparison.high:+.1f}], "
                     f"{comparison.wins} fixed, {comparison.losses} broken, sign test p = {comparison.p_two_sided:.3g}")
        lines += [f"held-out {line}" for line in [failures_line(runs)] if line]
        lines.append(heldout_verdict(comparison))
        scores = {"n": comparison.n, "before": comparison.before, "after": comparison.after,
                  "before_interval": list(low), "after_interval": list(high),
                  "difference_interval": [comparison.low, comparison.high], "fixed": comparison.wins,
                  "broken": comparison.losses, "p_two_sided": comparison.p_two_sided}
        RunDir(run_dir).write_text("test_scores.json", json.dumps(scores, indent=2) + "\n")
    usage = result.usage
    lines.append(f"LM calls: target {usage['target'].calls} (+{usage['target'].cached_calls} cached), "
                 f"teacher {usage['teacher'].calls} (+{usage['teacher'].cached_calls} cached) during compile")
    failures = {role: u.failures for role, u in usage.items() if u.failures}
    if failures:
        lines.append("failures (scored 0, retried on the next run): " + "; ".join(
            f"{role} " + ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
            for role, counts in failures.items()))
    lines.append(f"wall time: {time.perf_counter() - started:.0f} s")
    RunDir(run_dir).write_text("report.md", render_report(run_dir))  # only over a report.md cd-dspy wrote
    lines.append(f"compiled program: {run_dir / 'program.json'}   report: {run_dir / 'report.md'}")
    print("\n".join(lines))
    return 0


def heldout_verdict(comparison: Comparison) -> str:
    """One plain sentence on the held-out comparison: a gain, a loss, or why none can be shown on this many."""
    from cd_dspy.core.stats import min_detectable_gain, min_wins_for_significance

    p = comparison.p_two_sided
    if p < 0.05:
        side = "a gain" if comparison.difference > 0 else "a loss"
        return f"held-out verdict: {side} of {comparison.difference:+.1f} points (sign test p = {p:.3g} < 0.05)"
    wins = min_wins_for_significance(0.025)  # a two-sided sign test at 0.05: 0.5**w < 0.025
    return (f"held-out verdict: no change shown (p = {p:.2g}). On {comparison.n} paired examples only a change of "
            f"at least {min_detectable_gain(comparison.n, 0.025):.0f} points ({wins} examples fixed and none "
            "broken) can be told from noise; score both programs on more held-out examples (a larger --test) to "
            "resolve a smaller one")


def cmd_evaluate(args) -> int:
    task, splits, metric = load_task_and_splits(args)
    program = make_program(args, task)
    if args.load:
        if not Path(args.load).exists():
            raise InputError(f"no saved program at {args.load}")
        from cd_dspy.phases.integrate import load_program

        load_program(program, args.load, allow_unsafe_lm_state=True)
    program.set_lm(resolve_lm(args.lm, "target", args.api_base))
    examples = splits[args.split][: args.n] if args.n else splits[args.split]
    outcome = score_examples(program, examples, metric, args.threads)
    score = 100 * sum(outcome.scores) / len(outcome.scores) if outcome.scores else float("nan")
    print(f"{task.name} {args.split} ({len(examples)} examples) with {args.lm}: {score:.1f}")
    if line := failures_line({args.split: outcome}):
        print(line, file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from cd_dspy.lms import list_models

    print(f"{'name':<22} {'role':<8} {'installed':<10} {'assembled':<10} size")
    for row in list_models():
        row = row if isinstance(row, dict) else vars(row)
        size = row.get("size_mb") or row.get("size") or ""
        print(f"{row['name']:<22} {row.get('role', ''):<8} {str(row.get('installed')):<10} "
              f"{str(row.get('assembled')):<10} {size} MB")
    return 0


def cmd_worker(args) -> int:
    from cd_dspy.scale.worker import run_worker

    report = run_worker(args.storage, args.study, wait=args.wait, max_trials=args.max_trials, num_threads=args.threads)
    print(f"worker: {report.trials} trials of study {report.study}, {report.target_calls} target calls, "
          f"{report.seconds:.0f} s")
    return 0


def cmd_report(args) -> int:
    from cd_dspy.core.report import render_report

    print(render_report(args.run_dir), end="")
    return 0



# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cd-dspy", description="Concept Distillation for DSPy programs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each phase decides")
    sub = parser.add_subparsers(dest="command", required=True)

    comp = sub.add_parser("compile", help="compile a program for the target LM with rules from the teacher")
    data_arguments(comp)
    comp.add_argument("--target", default=DEFAULT_TARGET, help="catalog name, .gguf path or litellm model")
    comp.add_argument("--teacher", default=DEFAULT_TEACHER, help="catalog name, .gguf path or litellm model")
    comp.add_argument("--target-api-base")
    comp.add_argument("--teacher-api-base")
    comp.add_argument("--train", type=int, default=12)
    comp.add_argument("--val", type=int, default=16, help="split into a search part and a confirmation part")
    comp.add_argument("--test", type=int, default=16, help="held-out examples scored before and after")
    add_cd_arguments(comp)  # --auto, --trials, --max-mistakes, ... (shared with migrate)
    comp.add_argument("--run-dir", help="artifacts and resume state (default runs/<task>)")
    comp.add_argument("--fresh", action="store_true",
                      help="start over: remove the files cd-dspy wrote in --run-dir (never any other)")
    comp.add_argument("--storage", help="Optuna storage: an RDB URL (postgresql://..., sqlite:///...) or a journal "
                      "file ending in .log (default: SQLite in --run-dir)")
    comp.add_argument("--workers", action="store_true",
                      help="let 'cd-dspy worker' processes evaluate the search's trials (on --storage, an RDB URL)")
    comp.set_defaults(func=cmd_compile)

    worker = sub.add_parser("worker", help="join a search published by 'compile --workers' and evaluate its trials")
    worker.add_argument("--storage", required=True, help="the compile's Optuna RDB storage URL")
    worker.add_argument("--study", default="concept-distillation", help="the compile's study name (or a full one)")
    worker.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for a search to be published, and to stay idle, before leaving")
    worker.add_argument("--max-trials", type=int, help="leave after this many trials")
    worker.add_argument("--threads", type=int, help="parallel LM calls (default: the compile's)")
    worker.set_defaults(func=cmd_worker)

    ev = sub.add_parser("evaluate", help="score a saved program on a dataset split with an LM")
    data_arguments(ev)
    ev.add_argument("--load", help="a program saved by compile (run_dir/program.json)")
    ev.add_argument("--lm", default=DEFAULT_TARGET)
    ev.add_argument("--api-base")
    ev.add_argument("--split", choices=["train", "val", "test"], default="test")
    ev.add_argument("--n", type=int, help="only the first N examples of the split")
    ev.set_defaults(func=cmd_evaluate)

    models = sub.add_parser("models", help="the embedded model catalog and what is installed")
    models.set_defaults(func=cmd_models)

    report = sub.add_parser("report", help="rules, provenance, trials and LM usage of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    from cd_dspy.cli import migrate as cli_migrate  # migrate, rulebook export|check

    cli_migrate.add_parser(sub)

    from cd_dspy.cli import (
        distill as cli_distill,  # distill: primed teacher -> LoRA (SFT or logit KD) -> llama.cpp adapter
    )

    cli_distill.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with console_logging(args.verbose), adapter_context(chosen_adapter(args)):
            return args.func(args)
    except InputError as exc:
        print(f"cd-dspy: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        if args.verbose:
            raise
        print(f"cd-dspy: error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
