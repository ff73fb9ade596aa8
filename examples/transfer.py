"""Transfer matrix: apply each rulebook to each model (no teacher) and score with and without its rules.

    python examples/transfer.py --task math-basic --train 24 --val 40 --test 80 \\
        --rulebooks runs/migrate-math-basic/rulebook.yaml --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b \\
        --run-dir runs/transfer-math-basic --out examples/results/transfer_math_basic

Each cell: the held-out score with the rules minus without (points) with its 95% interval, fixed/broken
examples and McNemar's exact p (`cd_dspy.migration.transfer.check_rulebook`). The rules applied are a rulebook's
pinned and free ones; `--include-dropped` applies its dropped ones too (a rulebook with none to apply is
listed as skipped). Use the split sizes of the run that
learned the rulebook, so its test split is the one neither its compile nor its selection saw. Writes
OUT/transfer.json and OUT/transfer.md; per-example records go to --run-dir (a rerun repeats no call, and
the rules-free score of a model is computed once for all rulebooks).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import write_report  # noqa: E402

from cd_dspy.core.loading import (  # noqa: E402
    adapter_context,
    chosen_adapter,
    data_arguments,
    load_task_and_splits,
    make_program,
    resolve_lm,
    split_size_arguments,
)
from cd_dspy.core.stats import comparison_cell  # noqa: E402
from cd_dspy.migration.transfer import check_rulebook  # noqa: E402
from cd_dspy.phases.rulebook import FREE, Rulebook  # noqa: E402


def _cell(cell: dict) -> str:
    if cell.get("skipped"):
        return f"- ({cell['skipped']})"
    c = cell["comparison"]
    own = " (learned here)" if cell["learned_on"] == cell["model"] else ""
    return comparison_cell(c) + own


def render(report: dict) -> str:
    s = report["settings"]
    models = s["models"]
    lines = [f"# Rulebook transfer: {s['task']}", "",
             f"Test split: {s['test']} examples (seed {s['seed']}; train {s['train']}, val {s['val']} as in the runs "
             "that learned the rulebooks). Each cell: score with the rules − without (points) [95% CI], examples "
             "fixed/broken, McNemar exact p (two-sided). Rules applied: the rulebook's pinned and free rules"
             + (", and its dropped ones (--include-dropped)." if s["include_dropped"] else "."), "",
             "| rulebook (rules) | " + " | ".join(f"`{m}`" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for book in s["rulebooks"]:
        cells = {c["model_name"]: c for c in report["cells"] if c["rulebook"] == book}
        rules = next(iter(cells.values())).get("rules", 0) if cells else "?"
        lines.append(f"| `{book}` ({rules}) | " + " | ".join(_cell(cells[m]) if m in cells else "-" for m in models)
                     + " |")
    lines += ["", "| rulebook | model | without [95% CI] | with [95% CI] |", "|---|---|---|---|"]
    for c in (c for c in report["cells"] if not c.get("skipped")):
        w, r = c["without"], c["with_rules"]
        lines.append(f"| `{c['rulebook']}` | `{c['model_name']}` | {w['score']:.1f} [{w['low']:.1f}, {w['high']:.1f}] "
                     f"| {r['score']:.1f} [{r['low']:.1f}, {r['high']:.1f}] |")
    return "\n".join(lines + ["", f"Command: `{report['command']}`", ""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rulebooks", nargs="+", required=True, help="rulebook YAML files")
    parser.add_argument("--models", nargs="+", required=True,
                        help="catalog names, .gguf paths, litellm models, or simulated-target / simulated-teacher")
    data_arguments(parser)  # --task, --program, --metric, --data, --seed, --threads, --adapter
    split_size_arguments(parser, test=80)  # --train 24, --val 40: the defaults of cd-dspy migrate
    parser.add_argument("--run-dir", required=True, help="per-example records (resume)")
    parser.add_argument("--out", required=True, help="folder for transfer.json and transfer.md")
    parser.add_argument("--include-dropped", action="store_true",
                        help="apply the rules a rulebook drops too (do rules rejected for one model help another?)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    books = [Rulebook.load(path) for path in args.rulebooks]  # every file checked before any model runs
    if args.include_dropped:
        books = [Rulebook([replace(r, status=FREE) for r in b.rules], b.learned, b.path) for b in books]
    task, splits, metric = load_task_and_splits(args)
    cells = []
    with adapter_context(chosen_adapter(args)):
        for name in args.models:
            lm = resolve_lm(name, "target")
            for path, book in zip(args.rulebooks, books, strict=True):
                if not book.applied():
                    cells.append({"rulebook": path, "model_name": name, "skipped": "no pinned or free rule"})
                    continue
                check = check_rulebook(make_program(args, task), book, lm, metric, splits["test"],
                                       run_dir=Path(args.run_dir) / name.replace("/", "_"), num_threads=args.threads,
                                       progress=not args.quiet)
                print(check.describe(), file=sys.stderr)
                cells.append({**check.to_dict(), "rulebook": path, "model_name": name})
    report = {"settings": {"task": task.name, "train": args.train, "val": args.val, "test": len(splits["test"]),
                           "seed": args.seed, "models": args.models, "rulebooks": args.rulebooks,
                           "include_dropped": args.include_dropped},
              "cells": cells, "command": "python examples/transfer.py " + " ".join(argv or sys.argv[1:])}
    return write_report(args.out, "transfer", report, render)


if __name__ == "__main__":
    main()
