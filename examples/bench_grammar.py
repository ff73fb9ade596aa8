"""Target calls with the JSON grammar always on vs only on a parse failure, side by side in one run.

Each question is answered by the task's program under both engine modes, the order alternating per
question (both share one loaded model, so the second call finds the prompt prefix warm: alternating
balances that). Reports wall time per call, calls per minute, the ratio, parse failures and accuracy.

    python examples/bench_grammar.py --task math-basic --n 30 --out examples/results/grammar
"""

from __future__ import annotations

import argparse
import sys
import time

import dspy
from bench_lib import write_report

from cd_dspy.programs import get_task
from cd_dspy.stats import score_interval

MODES = ("always", "on_failure")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="math-basic")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cd_dspy.lms import local_lm

    task = get_task(args.task)
    questions = task.load_splits(seed=args.seed, sizes={"train": 0, "val": 0, "test": args.n})["test"]
    lms = {mode: local_lm(args.model, role="target", cache=False, grammar=mode) for mode in MODES}
    seconds = {mode: 0.0 for mode in MODES}
    failures = {mode: 0 for mode in MODES}
    scores: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i, example in enumerate(questions):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            program = task.make_program()
            program.set_lm(lms[mode])
            started = time.perf_counter()
            try:
                with dspy.context(adapter=dspy.JSONAdapter()):
                    prediction = program(**example.inputs())
                scores[mode].append(float(task.metric(example, prediction)))
            except Exception:  # an unparseable reply: what the mode is judged on
                failures[mode] += 1
                scores[mode].append(0.0)
            seconds[mode] += time.perf_counter() - started
    report = {"command": "python examples/bench_grammar.py " + " ".join(argv or sys.argv[1:]), "n": len(questions),
              "modes": {mode: {"seconds": round(seconds[mode], 1),
                               "seconds_per_call": round(seconds[mode] / len(questions), 2),
                               "calls_per_minute": round(60 * len(questions) / seconds[mode], 2),
                               "parse_failures": failures[mode],
                               "accuracy": 100 * sum(scores[mode]) / len(questions),
                               "accuracy_interval": list(score_interval(scores[mode])),
                               "engine": dict(lms[mode].engine.stats)} for mode in MODES}}
    report["speedup"] = round(seconds["always"] / seconds["on_failure"], 2)
    return write_report(args.out, "bench_grammar", report, render)


def render(report: dict) -> str:
    lines = [f"# JSON grammar always vs on failure ({report['command']})", "",
             "| mode | s/call | calls/min | parse failures | accuracy [95% CI] | completions (free/grammar) |",
             "|---|---|---|---|---|---|"]
    for mode, m in report["modes"].items():
        low, high = m["accuracy_interval"]
        lines.append(f"| {mode} | {m['seconds_per_call']} | {m['calls_per_minute']} | {m['parse_failures']} / "
                     f"{report['n']} | {m['accuracy']:.1f} [{low:.1f}, {high:.1f}] | {m['engine']['free']} / "
                     f"{m['engine']['grammar']} |")
    lines += ["", f"Speed-up of on_failure over always: {report['speedup']}x (wall time over the same questions).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
