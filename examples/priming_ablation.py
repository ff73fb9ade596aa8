"""CD with each teacher priming strategy on the same split and models: rules proposed, verified and selected,
the confirmation decision, and the held-out score against the unchanged program (95% intervals, paired sign
test). Strategies: cd_dspy.core.priming (none, teacher, confidence and ground_truth, the paper's wording with no
gold shown; gold, the gold answer shown and to be justified, which also lets the teacher see the metric's
feedback).

    python examples/priming_ablation.py --task math-basic --train 12 --val 16 --test 24 --trials 4 \
        --max-mistakes 4 --verify-correct 4 --out examples/results/priming_ablation_math_basic
    python examples/priming_ablation.py --task simulated --train 12 --val 24 --test 12 --out /tmp/ablation

Each strategy compiles in its own run directory under <out>/runs/<strategy> (a rerun resumes); the target's
calls repeat across strategies and come from DSPy's cache on local models.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench_lib import SIMULATED, held_out_record, load_task, make_lm, simulated_lms, split_arguments, write_report

from cd_dspy import ConceptDistillation
from cd_dspy.config import grouped
from cd_dspy.core.loading import adapter_context
from cd_dspy.core.priming import PRIMING_STRATEGIES
from cd_dspy.core.scoring import per_example_scores
from cd_dspy.programs import ADAPTERS, TASKS

ORDER = ("none", "teacher", "confidence", "ground_truth", "gold")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split_arguments(parser, run_dir=False)
    parser.add_argument("--teacher", default="qwen2.5-coder-1.5b")
    parser.add_argument("--strategies", default=",".join(ORDER), help="comma-separated cd_dspy.core.priming names")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-mistakes", type=int, default=6)
    parser.add_argument("--verify-correct", type=int, default=8, help="correct examples each rule is tried on")
    parser.add_argument("--conditional-rules", action="store_true")
    parser.add_argument("--adapter", choices=ADAPTERS, help="default: the task's (math: chat)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in PRIMING_STRATEGIES]
    if unknown or not strategies:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(ORDER)}")

    task = load_task(args.task, args.seed, {"train": args.train, "val": args.val, "test": args.test})
    if args.task == SIMULATED:
        target, teacher = simulated_lms()
        args.target, args.teacher = "simulated-target", "simulated-teacher"
    else:
        target, teacher = make_lm(args.target, "target"), make_lm(args.teacher, "teacher")
    metric, test = task.metric_with_feedback, task.splits["test"]
    report = {"command": "python examples/priming_ablation.py " + " ".join(argv or sys.argv[1:]),
              "task": args.task, "target": args.target, "teacher": args.teacher,
              "splits": {k: len(v) for k, v in task.splits.items()}, "strategies": {}}
    with adapter_context(args.adapter or TASKS[args.task].adapter):
        base = task.make_program()
        base.set_lm(target)
        baseline = per_example_scores(base, test, metric, 1) if test else []
        report["baseline"] = held_out_record(baseline, None) if test else None
        for strategy in strategies:
            started = time.perf_counter()
            cd = ConceptDistillation(**grouped(carrier="rules",  # this script measures rules
                                     metric=metric, teacher_lm=teacher, target_lm=target, priming=strategy,
                                     num_trials=args.trials, max_mistakes=args.max_mistakes, seed=args.seed,
                                     verify_correct=args.verify_correct,
                                     conditional_rules=args.conditional_rules, num_threads=1, progress=False,
                                     run_dir=Path(args.out) / "runs" / strategy))
            compiled = cd.compile(task.make_program(), trainset=task.splits["train"], valset=task.splits["val"])
            result = cd.result
            row = {"rules_proposed": len(result.rules),
                   "rules_verified": sum(bool(r.verification and r.verification.get("kept")) for r in result.rules),
                   "rules_selected": len(result.selected_rule_ids),
                   "selected": [r.text for r in result.rules if r.id in result.selected_rule_ids],
                   "confirmation": [result.baseline_score, result.best_score], "message": result.message,
                   "teacher_calls": result.usage["teacher"].calls, "target_calls": result.usage["target"].calls,
                   "seconds": round(time.perf_counter() - started, 1)}
            if test:
                row["held_out"] = held_out_record(per_example_scores(compiled, test, metric, 1), baseline)
            report["strategies"][strategy] = row
            report["pending"] = strategies[len(report["strategies"]):]
            write_report(args.out, "priming_ablation", report, render)  # after each strategy: a cut run leaves a table
    return report


def _held(rec: dict | None) -> str:
    if not rec:
        return "-"
    cell = f"{rec['score']:.1f} [{rec['ci'][0]:.1f}, {rec['ci'][1]:.1f}]"
    vs = rec.get("vs_baseline")
    if vs:
        cell += (f"; {vs['difference']:+.1f} [{vs['ci'][0]:+.1f}, {vs['ci'][1]:+.1f}], {vs['fixed']}/{vs['broken']}, "
                 f"p = {vs['p_two_sided']:.3g}")
    return cell


def _time(row: dict) -> str:
    """This invocation's seconds; under 1 s the strategy was resumed from its run directory, not compiled."""
    return "resumed" if row["seconds"] < 1 else f"{row['seconds']:.0f} s"


def render(report: dict) -> str:
    pending = report.get("pending")
    lines = [f"# Priming ablation: CD on {report['task']} ({report['command']})", "",
             *([f"**PARTIAL**: not run yet: {', '.join(pending)} (rerun the command: finished strategies resume from "
                "their run directories).", ""] if pending else []),
             f"Splits {report['splits']}; target {report['target']}, teacher {report['teacher']}. Held-out "
             f"baseline (no rules): {_held(report['baseline'])}.", "",
             "| priming | rules proposed | verified | selected | confirmation baseline -> compiled | held-out "
             "[95% CI]; vs baseline, fixed/broken, p | teacher calls | time (resumed: done by an earlier run) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in report["strategies"].items():
        conf = row["confirmation"]
        conf_cell = "not run" if conf[0] is None else f"{conf[0]:.1f} -> {conf[1]:.1f}"
        unchanged = "= baseline (no rule kept: program unchanged)"
        held = _held(row.get("held_out")) if row["rules_selected"] else unchanged
        lines.append(f"| {name} | {row['rules_proposed']} | {row['rules_verified']} | {row['rules_selected']} | "
                     f"{conf_cell} | {held} | {row['teacher_calls']} | {_time(row)} |")
    lines += ["", "Selected rules:"]
    lines += [f"- {name}: " + ("; ".join(row["selected"]) or "none") for name, row in report["strategies"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
