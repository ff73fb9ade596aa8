"""More held-out problems: compiled programs and the unoptimized program, scored on math-basic problems that are in
none of a run's splits, paired (exact two-sided sign test).

The main job (`cd-dspy compile`) scores its program on a few held-out problems, too few to resolve less than about
40 points. This scores the same compiled program (its run directory's `program.json`) on N more:

    python examples/main_job_heldout.py --load runs/math-basic/program.json --n 48 \
        --out examples/results/main_job/heldout_more.json

`--splits` names other seed-0 splits to stay out of (a benchmark's), and `--also NAME=PATH` scores more saved
programs on the same problems, each paired against the baseline and against `--load`: a replicate of a benchmark
comparison on problems none of its methods saw.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from cd_dspy.cli.main import build_parser
from cd_dspy.core.loading import adapter_context
from cd_dspy.core.scoring import score_examples
from cd_dspy.core.stats import Comparison, paired_difference, score_interval
from cd_dspy.lms import local_lm
from cd_dspy.phases.integrate import load_program
from cd_dspy.programs import get_task

_MAIN_JOB = build_parser().parse_args(["compile"])  # `cd-dspy compile` with no arguments: its sizes and seed
MAIN_JOB_SIZES = {"train": _MAIN_JOB.train, "val": _MAIN_JOB.val, "test": _MAIN_JOB.test}


def fresh_problems(task, n: int, seed: int, sizes: dict[str, int] | None = None) -> list:
    """The first `n` problems of a seeded pool that are in none of the seed-0 splits of `sizes` (the main job's)."""
    sizes = sizes or MAIN_JOB_SIZES
    main = task.load_splits(seed=_MAIN_JOB.seed, sizes=sizes, path=None)
    seen = {ex.question for split in main.values() for ex in split}
    extra = sum(sizes.values())  # at most this many can be the run's
    pool = task.load_splits(seed=seed, sizes={"train": 0, "val": 0, "test": n + extra}, path=None)["test"]
    fresh = [ex for ex in pool if ex.question not in seen][:n]
    if len(fresh) < n:
        raise SystemExit(f"only {len(fresh)} problems outside the run's splits; ask for fewer (--n).")
    return fresh


def parse_sizes(text: str) -> dict[str, int]:
    """"24,40,80" -> {"train": 24, "val": 40, "test": 80}."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--splits takes TRAIN,VAL,TEST sizes such as 24,40,80, got {text!r}")
    return dict(zip(("train", "val", "test"), map(int, parts), strict=True))


def parse_named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--also takes NAME=PATH (a saved program.json), got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", required=True, help="a compiled program.json (the main job's)")
    p.add_argument("--also", type=parse_named, action="append", default=[], metavar="NAME=PATH",
                   help="another saved program to score on the same problems (repeatable)")
    p.add_argument("--splits", type=parse_sizes, default=MAIN_JOB_SIZES, metavar="TRAIN,VAL,TEST",
                   help="the seed-0 math-basic splits to stay out of (default: the main job's)")
    p.add_argument("--n", type=int, default=48, help="held-out problems to score")
    p.add_argument("--seed", type=int, default=1, help="seed of the problem pool (the runs' is 0)")
    p.add_argument("--target", default="qwen2.5-coder-0.5b")
    p.add_argument("--out", required=True, help="JSON with the programs' scores and the paired comparisons")
    p.add_argument("--recount", action="store_true",
                   help="no LM call: add the per-kind counts to an existing --out from its recorded scores")
    args = p.parse_args(argv)
    names = [name for name, _ in args.also]
    if len(set(names)) < len(names) or {"before", "after"} & set(names):
        p.error(f"--also names must differ from each other and from 'before' and 'after', got {names}")
    task = get_task("math-basic")
    problems = fresh_problems(task, args.n, args.seed, args.splits)
    if args.recount:
        record = json.loads(Path(args.out).read_text())
        record["by_kind"] = kind_counts(problems, recorded_scores(record))
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        return
    target = local_lm(args.target)
    programs = {"before": task.make_program(), **{  # the runs' own files
        name: load_program(task.make_program(), path, allow_unsafe_lm_state=True)
        for name, path in [("after", args.load), *args.also]}}
    scores = {}
    with adapter_context(task.adapter):
        for name, program in programs.items():
            program.set_lm(target)
            scores[name] = score_examples(program, problems, task.metric, 1).scores
    before, after = scores["before"], scores["after"]
    comparison = paired_difference(after, before)
    record = heldout_record(comparison, before, after)
    record.update(seed=args.seed, program=args.load, splits_avoided=args.splits,
                  command=shlex.join(["python", "examples/main_job_heldout.py", *(argv or sys.argv[1:])]))
    print(f"held-out problems: {comparison.describe()}")
    for name, path in args.also:
        vs_before, after_vs_this = paired_difference(scores[name], before), paired_difference(after, scores[name])
        record.setdefault("also", {})[name] = {
            "program": path, "scores": scores[name], "interval": list(score_interval(scores[name])),
            "vs_before": vs_before.to_dict(), "after_vs_this": after_vs_this.to_dict()}
        print(f"{name} against the baseline: {vs_before.describe()}")
        print(f"{args.load} against {name}: {after_vs_this.describe()}")
    record["by_kind"] = kind_counts(problems, scores)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


def recorded_scores(record: dict) -> dict[str, list[float]]:
    """Every program's per-problem scores in a record this script wrote."""
    also = {name: entry["scores"] for name, entry in record.get("also", {}).items()}
    return {"before": record["before_scores"], "after": record["after_scores"], **also}


def kind_counts(problems: list, scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per kind of problem (the generator's label, read only for this report): how many, and each program's
    number right."""
    counts: dict[str, dict[str, float]] = {}
    for i, example in enumerate(problems):
        row = counts.setdefault(example.kind, {"n": 0, **dict.fromkeys(scores, 0.0)})
        row["n"] += 1
        for name, values in scores.items():
            row[name] += values[i]
    return counts


def heldout_record(comparison: Comparison, before: list[float], after: list[float]) -> dict:
    """The paired comparison (`Comparison.to_dict`), each program's score interval and the per-problem scores."""
    return {**comparison.to_dict(), "before_interval": list(score_interval(before)),
            "after_interval": list(score_interval(after)), "before_scores": before, "after_scores": after}


if __name__ == "__main__":
    main()
