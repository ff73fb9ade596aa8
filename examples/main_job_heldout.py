"""More held-out problems for the main job: its compiled program and the unoptimized program, scored on math-basic
problems that are in none of the main job's splits, paired (exact two-sided sign test).

The main job (`cd-dspy compile`) scores its program on 16 held-out problems, too few to resolve less than about
40 points. This scores the same compiled program (its run directory's `program.json`) on N more:

    python examples/main_job_heldout.py --load runs/math-basic/program.json --n 48 \
        --out examples/results/main_job/heldout_more.json
"""

from __future__ import annotations

import argparse
import json
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


def fresh_problems(task, n: int, seed: int) -> list:
    """The first `n` problems of a seeded pool that are in none of the main job's splits."""
    main = task.load_splits(seed=_MAIN_JOB.seed, sizes=MAIN_JOB_SIZES, path=None)
    seen = {ex.question for split in main.values() for ex in split}
    extra = sum(MAIN_JOB_SIZES.values())  # at most this many can be the main job's
    pool = task.load_splits(seed=seed, sizes={"train": 0, "val": 0, "test": n + extra}, path=None)["test"]
    fresh = [ex for ex in pool if ex.question not in seen][:n]
    if len(fresh) < n:
        raise SystemExit(f"only {len(fresh)} problems outside the main job's splits; ask for fewer (--n).")
    return fresh


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", required=True, help="the main job's program.json")
    p.add_argument("--n", type=int, default=48, help="held-out problems to score")
    p.add_argument("--seed", type=int, default=1, help="seed of the problem pool (the main job's is 0)")
    p.add_argument("--target", default="qwen2.5-coder-0.5b")
    p.add_argument("--out", required=True, help="JSON with both programs' scores and the paired comparison")
    args = p.parse_args(argv)
    task = get_task("math-basic")
    problems = fresh_problems(task, args.n, args.seed)
    target = local_lm(args.target)
    baseline = task.make_program()
    baseline.set_lm(target)
    compiled = load_program(task.make_program(), args.load, allow_unsafe_lm_state=True)  # the main job's own file
    compiled.set_lm(target)
    with adapter_context(task.adapter):
        before = score_examples(baseline, problems, task.metric, 1).scores
        after = score_examples(compiled, problems, task.metric, 1).scores
    comparison = paired_difference(after, before)
    record = heldout_record(comparison, before, after)
    record.update(seed=args.seed, program=args.load,
                  command=" ".join(["python", "examples/main_job_heldout.py", *(argv or sys.argv[1:])]))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out problems: {comparison.describe()}")


def heldout_record(comparison: Comparison, before: list[float], after: list[float]) -> dict:
    """The paired comparison (`Comparison.to_dict`), each program's score interval and the per-problem scores."""
    return {**comparison.to_dict(), "before_interval": list(score_interval(before)),
            "after_interval": list(score_interval(after)), "before_scores": before, "after_scores": after}


if __name__ == "__main__":
    main()
