"""Held-out scores of the same rules shown always vs only where their condition applies.

Takes the search's best subset from a finished compile (whether or not the confirmation accepted it)
and scores, on the held-out test split, the program without rules, with those rules always on, and
with them conditional; paired comparisons against the baseline with 95% intervals.

    python examples/conditional_vs_always.py --task math-basic --run-dir runs/i8-math-cond --train 24 \
        --val 40 --test 40 --out examples/results/conditional_vs_always_math_basic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import dspy
from bench_lib import split_arguments, write_report

from cd_dspy.core.result import ConceptDistillationResult
from cd_dspy.core.scoring import per_example_scores
from cd_dspy.core.stats import comparison_cell, paired_difference, score_interval
from cd_dspy.phases.integrate import with_rules
from cd_dspy.programs import get_task


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cd_dspy.lms import local_lm

    task = get_task(args.task)
    test = task.load_splits(seed=args.seed, sizes={"train": args.train, "val": args.val, "test": args.test})["test"]
    result = ConceptDistillationResult.from_dict(json.loads((Path(args.run_dir) / "result.json").read_text()))
    by_id = {r.id: r for r in result.rules}
    best = result.candidates[0]["rule_ids"] if result.candidates else []
    rules = [by_id[i] for i in best]
    target = local_lm(args.target, role="target")
    base = task.make_program()
    report = {"command": "python examples/conditional_vs_always.py " + " ".join(argv or sys.argv[1:]),
              "rules": [r.text for r in rules], "n_test": len(test), "programs": {}}
    with dspy.context(adapter=dspy.JSONAdapter()):
        scores = {}
        for name, conditional in (("baseline", None), ("always-on", False), ("conditional", True)):
            started = time.perf_counter()
            program = with_rules(base, [] if conditional is None else rules, lm=target, conditional=bool(conditional))
            scores[name] = per_example_scores(program, test, task.metric, 1)
            low, high = score_interval(scores[name])
            report["programs"][name] = {"score": 100 * sum(scores[name]) / len(test), "interval": [low, high],
                                        "seconds": round(time.perf_counter() - started, 1)}
    for name in ("always-on", "conditional"):
        report["programs"][name]["vs_baseline"] = paired_difference(scores[name], scores["baseline"]).to_dict()
    report["conditional_vs_always_on"] = paired_difference(scores["conditional"], scores["always-on"]).to_dict()
    return write_report(args.out, "conditional_vs_always", report, render)


def render(report: dict) -> str:
    lines = [f"# Always-on vs conditional rules ({report['command']})", "", "Rules:"]
    lines += [f"- {text}" for text in report["rules"]]
    lines += ["", f"| program | held-out score ({report['n_test']}) [95% CI] | vs baseline [95% CI], fixed/broken, p |",
              "|---|---|---|"]
    for name, p in report["programs"].items():
        vs = p.get("vs_baseline")
        cell = comparison_cell(vs) if vs else ""
        lines.append(f"| {name} | {p['score']:.1f} [{p['interval'][0]:.1f}, {p['interval'][1]:.1f}] | {cell} |")
    c = report["conditional_vs_always_on"]
    lines += ["", f"Conditional minus always-on: {c['difference']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}], "
              f"{c['wins']} fixed / {c['losses']} broken, sign test p = {c['p_two_sided']:.3g} (two-sided).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
