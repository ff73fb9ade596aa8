"""Rules before and after the verified-induction change, on the same mistakes of a finished run.

"After" is the run directory of a compile with the current code (its rules.json carries each rule's
verification). "Before" re-runs the induction of the code before the change (commit LEGACY_COMMIT,
read with `git show`) on the same sampled mistakes with the same teacher, then verifies those rules
with the current verifier on the same correct sample, so both sets are measured the same way.

    python examples/rules_before_after.py --task math-basic --run-dir runs/i8-math --train 24 --val 40 \
        --test 40 --max-mistakes 8 --out examples/results/rules_before_after_math_basic
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import dspy
from bench_lib import split_arguments, write_report

from cd_dspy.core.evaluation import CachedEvaluator, ScoredMetric
from cd_dspy.core.result import Explanation, Mistake, Rule, Verification
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import UsageMeter
from cd_dspy.phases.collect import sample_mistakes
from cd_dspy.phases.induce import is_instance_specific
from cd_dspy.phases.integrate import with_rules
from cd_dspy.phases.verify import correct_sample, verify_rules
from cd_dspy.programs import get_task

LEGACY_COMMIT = "c56ebb4"  # main before verified induction
ROOT = Path(__file__).resolve().parents[1]


def legacy_induce():
    """The induce module as it was at LEGACY_COMMIT."""
    source = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:cd_dspy/phases/induce.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(__file__).with_name("_legacy_induce.py")
    path.write_text(source)
    try:
        spec = importlib.util.spec_from_file_location("legacy_induce", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        path.unlink()
    return module


def summarise(rules: list[Rule], raw: list[str], sources: dict[str, str]) -> dict:
    checks = [Verification.from_dict(r.verification) for r in rules if r.verification]
    return {
        "proposed": len(raw), "after_filter": len(rules),
        "general": sum(not is_instance_specific(r.text, [sources.get(s, "") for s in r.sources]) for r in rules),
        "verified": sum(c.kept for c in checks),
        "fixed": sum(len(c.fixed) for c in checks), "mistakes_checked": sum(len(c.checked_mistakes) for c in checks),
        "broken": sum(len(c.broken) for c in checks), "correct_checked": sum(len(c.checked_correct) for c in checks),
        "rules": [{"text": r.text, "origin": r.origin, "verification": r.verification, "selected": r.selected}
                  for r in rules],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split_arguments(parser)
    parser.add_argument("--max-mistakes", type=int, default=8)
    parser.add_argument("--max-rules", type=int, default=5)
    parser.add_argument("--verify-correct", type=int, default=8)
    parser.add_argument("--teacher", default="qwen2.5-coder-1.5b")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cd_dspy.lms import local_lm

    dspy.configure(adapter=dspy.JSONAdapter())
    task = get_task(args.task)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    trainset = task.load_splits(seed=args.seed, sizes=sizes)["train"]
    run = Path(args.run_dir)
    saved = json.loads((run / "mistakes.json").read_text())
    mistakes = [Mistake.from_dict(m) for m in saved["mistakes"]]
    used = sample_mistakes(mistakes, args.max_mistakes, args.seed)
    sources = {m.id: json.dumps([m.inputs, m.gold, m.outputs], ensure_ascii=False) for m in mistakes}
    after_rules = [Rule.from_dict(r) for r in json.loads((run / "rules.json").read_text())]
    after_raw = [text for line in (run / "explanations.jsonl").read_text().splitlines()
                 for text in json.loads(line)["rules"]]

    target, teacher = local_lm(args.target, role="target"), local_lm(args.teacher, role="teacher")
    program = task.make_program()
    legacy = legacy_induce()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    explanations: list[Explanation] = legacy.explain_mistakes(program, used, teacher_lm=teacher,
                                                              priming="ground_truth", num_threads=1, retries=2,
                                                              on_done=lambda e: None)
    before_rules = legacy.build_rules(program, explanations, used, teacher_lm=teacher, priming="ground_truth",
                                      max_rules=args.max_rules, consolidate=True, retries=2)
    before_raw = [text for e in explanations for text in e.rules]
    induce_seconds = time.perf_counter() - started
    # the evaluator's own run directory (its scores, resumable), apart from the report files written beside it
    evaluator = CachedEvaluator(trainset, ScoredMetric(task.metric), run_dir=RunDir(out / "scores"), meter=UsageMeter(),
                                num_threads=1, log_name="verification_before.jsonl")
    correct = correct_sample(saved.get("correct", []), args.verify_correct, args.seed)
    verify_rules(before_rules, used, correct, evaluator=evaluator, threshold=1.0, max_sources=3,
                 program_with=lambda chosen: with_rules(program, chosen, lm=target))
    report = {"command": "python examples/rules_before_after.py " + " ".join(argv or sys.argv[1:]),
              "legacy_commit": LEGACY_COMMIT, "mistakes_used": [m.id for m in used],
              "correct_sample": correct, "seconds": round(time.perf_counter() - started, 1),
              "legacy_induce_seconds": round(induce_seconds, 1),
              "before": summarise(before_rules, before_raw, sources),
              "after": summarise(after_rules, after_raw, sources)}
    return write_report(out, "rules_before_after", report, render)


def render(report: dict) -> str:
    rows = [("rules the teacher proposed", "proposed"), ("after the specific-rule filter", "after_filter"),
            ("general by today's delexicalisation check", "general"),
            ("verified (fixed >= 1 source mistake, broke fewer than fixed)", "verified")]
    lines = [f"# Rules before and after verified induction ({report['command']})", "",
             "| | before | after |", "|---|---|---|"]
    lines += [f"| {label} | {report['before'][key]} | {report['after'][key]} |" for label, key in rows]
    before, after = report["before"], report["after"]
    lines += [f"| source mistakes fixed / checked | {before['fixed']} / {before['mistakes_checked']}"
              f" | {after['fixed']} / {after['mistakes_checked']} |",
              f"| correct examples broken / checked | {report['before']['broken']} / "
              f"{report['before']['correct_checked']} | {report['after']['broken']} / "
              f"{report['after']['correct_checked']} |", ""]
    for side in ("before", "after"):
        lines += [f"## {side}", ""]
        for rule in report[side]["rules"]:
            check = rule["verification"] or {}
            lines.append(f"- {rule['text']} — fixed {len(check.get('fixed', []))}/"
                         f"{len(check.get('checked_mistakes', []))}, broke {len(check.get('broken', []))}/"
                         f"{len(check.get('checked_correct', []))}, {'kept' if check.get('kept') else 'dropped'}"
                         + (", selected" if rule["selected"] else ""))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
