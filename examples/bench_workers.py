"""Trials per minute of the rule search with 1, 2 and 4 worker processes (`cd-dspy worker`).

The simulated world (cd_dspy.testing.simulated) with a fixed latency per target call, so that waiting for the
"API" dominates and a 2-core machine can show the scaling of the workers rather than of its CPUs. The
main compile plans the trials and waits; only the workers evaluate. Each configuration starts afresh
(its study deleted, its cached scores forgotten) and must select the same rules as the others.

    python examples/bench_workers.py --storage postgresql://cd_dspy:cd_dspy@127.0.0.1:5432/cd_dspy_test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dspy
from bench_lib import write_report

from cd_dspy import ConceptDistillation
from cd_dspy.config import grouped
from cd_dspy.scale.workers import Workers, public_url
from cd_dspy.testing.local_workers import start_local_workers
from cd_dspy.testing.simulated import answer_match, simulated_lms, simulated_splits


def run(storage: str, n_workers: int, args: argparse.Namespace, tmp: Path) -> dict:
    study = f"bench-workers-{uuid.uuid4().hex[:8]}"
    (tmp / study).mkdir()
    procs = start_local_workers(storage, study, n_workers, tmp / study)
    target, teacher = simulated_lms()  # the main process's own calls (collect, induce, confirm) without latency
    train, val = simulated_splits(args.train, args.val, seed=args.seed)
    cd = ConceptDistillation(**grouped(carrier="rules",  # this script measures rules
                             metric=answer_match, teacher_lm=teacher, target_lm=target, num_trials=args.trials,
                             verify=False, seed=args.seed, run_dir=tmp / study / "run", storage=storage,
                             study_name=study, resume=False, progress=False, num_threads=1,
                             workers=Workers("cd_dspy.testing.simulated:worker_setup", {"latency": args.latency})))
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    for proc, out in procs:
        if proc.wait(timeout=300) != 0:
            raise RuntimeError(f"a worker failed: {out.read_text()[-2000:]}")
    result = cd.result
    trials = sum(t.state == "complete" for t in result.trials)
    seconds = result.phase_seconds["select"]
    return {"workers": n_workers, "trials": trials, "search_examples": result.n_search,
            "select_seconds": seconds, "trials_per_minute": round(60.0 * trials / seconds, 2),
            "selected": sorted(result.selected_rule_ids), "best_score": result.best_score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=os.environ.get("CD_DSPY_TEST_POSTGRES_URL"),
                        help="an Optuna RDB URL (default $CD_DSPY_TEST_POSTGRES_URL, set by .ci/postgres)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per simulated target call")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/results/workers")
    args = parser.parse_args()
    if not args.storage:
        sys.exit("pass --storage URL (e.g. the URL that bash .ci/postgres prints)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for n in (int(x) for x in args.workers.split(",")):
            rows.append(run(args.storage, n, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    one = rows[0]["trials_per_minute"] if rows[0]["workers"] == 1 else None
    for row in rows:
        row["ratio_to_one_worker"] = round(row["trials_per_minute"] / one, 2) if one else None
    if len({json.dumps([r["selected"], r["best_score"]]) for r in rows}) != 1:
        raise RuntimeError(f"the configurations selected different rules: {rows}")
    command = "python " + " ".join([sys.argv[0], *[a if "://" not in a else public_url(a) for a in sys.argv[1:]]])
    report = {"command": command, "storage": public_url(args.storage).split("://")[0],
              "latency_s": args.latency, "cpus": os.cpu_count(), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = Path(args.out)
    write_report(out.parent, out.name, report, render)


def render(report: dict) -> str:
    rows = report["rows"]
    lines = [f"# Rule search with worker processes ({report['date']})", "", f"`{report['command']}`", "",
             f"Simulated target, {report['latency_s']:g} s per call, one call per example and thread; search part "
             f"of {rows[0]['search_examples']} examples per trial; {report['storage']} storage; {report['cpus']} "
             "CPUs. Each worker is a `cd-dspy worker` process; the main process only plans and waits.", "",
             "| workers | trials | search phase (s) | trials / minute | ratio to 1 worker |", "|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['trials']} | {r['select_seconds']:.1f} | {r['trials_per_minute']:.1f} | "
              f"{r['ratio_to_one_worker']:.2f} |" for r in rows]
    lines += ["", f"Every configuration selected the same rules ({rows[0]['selected']}, confirmation score "
              f"{rows[0]['best_score']}). The main process plans the trials in rounds (the first trials, TPE "
              "rounds of `batch_size`=4, backward-elimination rounds) and plans a round only when the one before "
              "has finished, so the result does not depend on the workers; a worker idles at the end of a round "
              "when fewer trials are left than workers, which is why 4 workers gain less than 2 do per worker."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
