"""How far a target's answers move when its prompt gains a sentence that says nothing: the noise floor that
every rule (CD's, InferRules', SIMBA's) must clear before verification or a paired test can credit it.

Each placebo is a content-free instruction, added exactly as CD adds a rule (cd_dspy.phases.integrate.with_rules,
under the same "rules" header). On the same examples as the unchanged program, the table gives the answers
it fixed and broke, the exact two-sided sign test, and the share of the examples the program got right that
it broke. With --run-dir, the rules of a finished CD compile on the same split are set beside them: their
verification tried each rule on the mistakes it came from and on a sample of correct training examples.

    python examples/prompt_sensitivity.py --task humaneval --train 40 --val 40 --test 84 --split train \
        --run-dir examples/results/bench_humaneval/cd_run --out examples/results/prompt_sensitivity_humaneval
    python examples/prompt_sensitivity.py --task simulated --train 24 --val 0 --test 0 --out /tmp/sensitivity

Greedy decoding on local models: a moved answer is the model's response to the changed prompt, not sampling
noise; a rerun reads every answer from DSPy's cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench_lib import SIMULATED, held_out_record, load_task, make_lm, simulated_lms, split_arguments, write_report

from cd_dspy.core.loading import adapter_context
from cd_dspy.core.result import Rule
from cd_dspy.core.scoring import per_example_scores
from cd_dspy.phases.integrate import with_rules
from cd_dspy.programs import ADAPTERS, TASKS

PLACEBOS = (
    "Read the task carefully before you answer.",
    "Answer exactly what is asked.",
    "Keep to the format the task asks for.",
)


def with_placebo(program: Any, text: str, lm: Any) -> Any:
    """A copy of `program` whose every predictor carries `text` as a rule (the way CD adds one)."""
    names = [name for name, _ in program.named_predictors()]
    rules = [Rule(id=f"placebo-{i}", text=text, predictor=name) for i, name in enumerate(names)]
    return with_rules(program, rules, lm=lm)


def placebo_row(text: str, scores: list[float], baseline: list[float]) -> dict[str, Any]:
    """The placebo's paired record against the baseline, with how many of the baseline's right answers it broke."""
    record = held_out_record(scores, baseline)
    right = sum(s >= 1.0 for s in baseline)
    return {"placebo": text, **record, "baseline_right": right, "moved": record["vs_baseline"]["fixed"]
            + record["vs_baseline"]["broken"]}


def cd_rules_row(run_dir: Path) -> dict[str, Any] | None:
    """Totals over the verified rules of a CD run dir: source mistakes fixed, correct examples broken."""
    path = Path(run_dir) / "rules.json"
    if not path.exists():
        return None
    checked = [r["verification"] for r in json.loads(path.read_text()) if r.get("verification")]
    return {"rules": len(checked), "run_dir": str(run_dir),
            "mistakes_checked": sum(len(v["checked_mistakes"]) for v in checked),
            "mistakes_fixed": sum(len(v["fixed"]) for v in checked),
            "correct_checked": sum(len(v["checked_correct"]) for v in checked),
            "correct_broken": sum(len(v["broken"]) for v in checked)}


def measure(make_program: Any, examples: list, metric: Any, lm: Any, placebos: tuple[str, ...],
            on_row: Any = None) -> dict[str, Any]:
    """The unchanged program's scores on `examples`, then one paired row per placebo (`on_row` after each)."""
    base = make_program()
    base.set_lm(lm)
    baseline = per_example_scores(base, examples, metric, 1)
    report: dict[str, Any] = {"baseline": held_out_record(baseline, None), "placebos": []}
    for text in placebos:
        scores = per_example_scores(with_placebo(make_program(), text, lm), examples, metric, 1)
        report["placebos"].append(placebo_row(text, scores, baseline))
        if on_row:
            on_row(report)
    return report


def _pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "0/0"


def render(report: dict) -> str:
    base = report["baseline"]
    lines = [f"# Prompt sensitivity: {report['task']}, target {report['target']}", "",
             f"Command: `{report['command']}`", "",
             f"{report['n']} examples of the {report['split']} split; the unchanged program scored "
             f"{base['score']:.1f} [{base['ci'][0]:.1f}, {base['ci'][1]:.1f}]. Each placebo is added as a rule "
             "would be; fixed/broken count the same examples, p is the exact two-sided sign test.", "",
             "| placebo | score [95% CI] | fixed / broken | p | answers moved | right answers broken |",
             "|---|---|---|---|---|---|"]
    for row in report["placebos"]:
        vs = row["vs_baseline"]
        lines.append(f"| {row['placebo']} | {row['score']:.1f} [{row['ci'][0]:.1f}, {row['ci'][1]:.1f}] | "
                     f"{vs['fixed']} / {vs['broken']} | {vs['p_two_sided']:.3g} | {_pct(row['moved'], row['n'])} | "
                     f"{_pct(vs['broken'], row['baseline_right'])} |")
    rows = report["placebos"]
    if rows:
        broken, right = sum(r["vs_baseline"]["broken"] for r in rows), sum(r["baseline_right"] for r in rows)
        lines += ["", f"All placebos together broke {_pct(broken, right)} of the right answers they were tried on."]
    cd = report.get("cd_rules")
    if cd:
        lines += ["", f"CD's {cd['rules']} candidate rules in `{cd['run_dir']}`, in verification: fixed "
                  f"{_pct(cd['mistakes_fixed'], cd['mistakes_checked'])} of the mistakes they came from and broke "
                  f"{_pct(cd['correct_broken'], cd['correct_checked'])} of the correct training examples they were "
                  "tried on."]
    if report.get("pending"):
        lines += ["", f"**PARTIAL**: not run yet: {', '.join(report['pending'])} (rerun the command)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split_arguments(parser, run_dir=False)
    parser.add_argument("--split", choices=("train", "val", "test"), default="train")
    parser.add_argument("--placebos", type=int, default=len(PLACEBOS), help=f"how many (1-{len(PLACEBOS)})")
    parser.add_argument("--run-dir", help="a finished CD compile on the same split: its rules' verification")
    parser.add_argument("--adapter", choices=ADAPTERS, help="default: the task's")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not 1 <= args.placebos <= len(PLACEBOS):
        parser.error(f"--placebos must be 1 to {len(PLACEBOS)}, got {args.placebos}")
    task = load_task(args.task, args.seed, {"train": args.train, "val": args.val, "test": args.test})
    examples = task.splits[args.split]
    if not examples:
        parser.error(f"the {args.split} split is empty: give --{args.split} a size")
    lm = simulated_lms()[0] if args.task == SIMULATED else make_lm(args.target, "target")
    placebos = PLACEBOS[: args.placebos]
    report = {"command": "python examples/prompt_sensitivity.py " + " ".join(argv or sys.argv[1:]),
              "task": args.task, "target": "simulated-target" if args.task == SIMULATED else args.target,
              "split": args.split, "n": len(examples),
              "cd_rules": cd_rules_row(Path(args.run_dir)) if args.run_dir else None}

    def save(partial: dict) -> None:
        report.update(partial, pending=list(placebos[len(partial["placebos"]):]))
        write_report(args.out, "prompt_sensitivity", report, render)

    adapter = args.adapter or ("chat" if args.task == SIMULATED else TASKS[args.task].adapter)
    with adapter_context(adapter):  # `save` writes the report after each placebo, the last one included
        measure(task.make_program, examples, task.metric, lm, placebos, on_row=save)
    return report


if __name__ == "__main__":
    main()
