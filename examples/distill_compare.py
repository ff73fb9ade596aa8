"""Rules vs weights on one split: the target with no help, with CD's rules, fine-tuned (SFT) on a primed
teacher's demonstrations, with logit KD from the teacher, and with rules + SFT together. Held-out scores with
95% intervals and a paired sign test against no help; training time and peak memory per adapter.

    python examples/distill_compare.py --task math-basic --train 24 --val 40 --test 40 --epochs 1 \
        --rules-run-dir examples/results/cd_math_basic_conditional --priming ground_truth --sft-priming none,gold \
        --out runs/cmp
    python examples/distill_compare.py --task math-basic --train 24 --val 40 --test 40 --estimate   # time only

The KD adapter's (alpha, temperature) is chosen on --val by --select-on (never on the test split). The
rules come from --rules (a `cd-dspy compile` program.json), --rules-run-dir (a finished compile) or a compile
run here (--cd-run-dir). Use the compile's --train/--val/--seed: the splits are cut from one seeded sequence,
so other sizes would put the compile's training or validation problems into this test split.
"rules + SFT" trains its own adapter on the same teacher replies shown under the rules' system prompt.
--sft-priming adds the response-priming study's own ablation: one more SFT adapter per strategy, each trained
on the demonstrations of the teacher primed that way (rows "SFT (<strategy>-primed teacher)").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dspy
from bench_lib import load_task, split_arguments, write_report

from cd_dspy.config import grouped
from cd_dspy.core.loading import adapter_context, resolve_lm
from cd_dspy.core.priming import PRIMING_STRATEGIES
from cd_dspy.core.stats import comparison_cell, min_detectable_gain, paired_difference
from cd_dspy.distill import LoraSettings, LoraTrainer, TrainSettings, load_student, with_student_view
from cd_dspy.distill import pipeline as pl
from cd_dspy.distill.student import model_file
from cd_dspy.programs import ADAPTERS, TASKS

METHODS = ("none", "rules", "sft", "kd", "rules+sft")
# Rates for --estimate, measured on this project's 2-core machine: a 0.5B chain-of-thought call on math-basic
# 6.7 s (JSON grammar, idle cores; README) to 10.7 s (ChatAdapter, shared cores; harness_math_basic.md), ~220
# prompt and ~100 reply tokens; the 1.5B about 3x slower (24 demonstrations with their log-probabilities took
# 8 min); one LoRA step of the 0.5B on a ~340-token record ~3 s (20 steps in 59-62 s in the committed
# comparison); loading the 0.5B through transformers ~35-60 s; one conversion ~10 s; the 1.5B accepted by the
# metric on ~85% of problems.
RATES = {"target_call": 8.0, "teacher_call": 18.0, "teacher_score": 2.0, "lora_step": 4.0, "load": 60.0,
         "convert": 10.0, "accepted": 0.85}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split_arguments(parser, run_dir=False)
    parser.add_argument("--teacher", default="qwen2.5-coder-1.5b", help="or simulated-solver with --task simulated")
    parser.add_argument("--student", help="the target's weights as a Hugging Face dir (default: its GGUF)")
    parser.add_argument("--priming", default="ground_truth",
                        help="the teacher's priming (a strategy or your sentence) for the SFT, KD and rules + SFT data")
    parser.add_argument("--sft-priming", default="", help="more strategies, comma-separated: one SFT adapter each, "
                        "on that strategy's teacher data (e.g. none,teacher,confidence,gold)")
    parser.add_argument("--rules", help="program.json of `cd-dspy compile` on this task (the CD rules)")
    parser.add_argument("--rules-run-dir", help="or a finished compile's run dir on the same split: its confirmed "
                        "rules, else its search's best subset (chosen on validation data, not confirmed)")
    parser.add_argument("--cd-run-dir", help="or compile CD here on the same split (resumable run directory)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-mistakes", type=int, default=6)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--kd-teacher", help="GGUF scoring the teacher's replies (default --teacher)")
    parser.add_argument("--kd-top-k", type=int, default=20)
    parser.add_argument("--kd-n-ctx", type=int, default=2048)
    parser.add_argument("--kd-grid", default="0.5:2", help="alpha:temperature pairs, chosen on --val")
    parser.add_argument("--select-on", choices=pl.SELECT_ON, default="metric")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lora-alpha", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--grammar", choices=["always", "on_failure", "never"])
    parser.add_argument("--train-threads", type=int)
    parser.add_argument("--estimate", action="store_true", help="print the expected time on 2 cores and exit")
    parser.add_argument("--adapter", choices=ADAPTERS, help="default: the task's (math: chat)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in args.methods if m not in METHODS]:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if "none" not in args.methods:
        args.methods.insert(0, "none")  # the baseline every row is compared with
    args.sft_priming = [p.strip() for p in args.sft_priming.split(",") if p.strip()]
    if bad := [p for p in args.sft_priming if p not in PRIMING_STRATEGIES or p == args.priming]:
        parser.error(f"--sft-priming {bad}: name strategies from {', '.join(sorted(PRIMING_STRATEGIES))} other "
                     f"than --priming ({args.priming}), whose SFT row the 'sft' method gives")
    if not args.estimate and not args.out:
        parser.error("--out is required (unless --estimate)")
    return args


def estimate(args: argparse.Namespace) -> dict[str, float]:
    """Expected seconds per phase on this project's 2-core machine (RATES; the CD compile not included)."""
    records = RATES["accepted"] * args.train
    grid = pl.parse_grid(args.kd_grid)
    primings = 1 + len(args.sft_priming)
    adapters = (sum(m in args.methods for m in ("sft", "rules+sft")) + ("kd" in args.methods) * len(grid)
                + len(args.sft_priming))
    kd = "kd" in args.methods
    return {"teacher demonstrations": primings * args.train * RATES["teacher_call"],
            "teacher log-probabilities": kd * records * RATES["teacher_score"],
            "student load": RATES["load"] if adapters else 0.0,
            "training": adapters * records * args.epochs * RATES["lora_step"],
            "conversion": adapters * RATES["convert"],
            "KD selection on validation": kd * (len(grid) > 1) * args.val * (
                len(grid) * RATES["target_call"] if args.select_on == "metric" else RATES["teacher_call"]),
            "held-out scoring": (len(args.methods) + len(args.sft_priming)) * args.test * RATES["target_call"]}


def rules_program(args: argparse.Namespace, task, target: str, teacher, notes: list[str]) -> dspy.Module | None:
    """CD's compiled program (from --rules, --rules-run-dir or compiled here), or None when none is given."""
    from cd_dspy.phases.integrate import load_program, with_rules

    if args.rules:
        return load_program(task.make_program(), args.rules, allow_unsafe_lm_state=True)
    if args.rules_run_dir:
        from cd_dspy.core.result import ConceptDistillationResult

        result = ConceptDistillationResult.from_dict(json.loads((Path(args.rules_run_dir) / "result.json").read_text()))
        if (result.n_train, result.n_val) != (args.train, args.val):
            raise SystemExit(f"{args.rules_run_dir} was compiled on {result.n_train} train / {result.n_val} val "
                             f"examples; pass --train {result.n_train} --val {result.n_val} so that the test split "
                             "holds the same held-out problems (the splits are cut from one seeded sequence).")
        ids = result.selected_rule_ids or (result.candidates[0]["rule_ids"] if result.candidates else [])
        rules = [r for r in result.rules if r.id in ids]
        if not rules:
            return task.make_program()  # no rule kept, no search run: `holds_rules` leaves the rules rows out
        conditional = bool(result.settings.get("conditional_rules"))
        status = "confirmed" if result.selected_rule_ids else "the search's best subset, not confirmed"
        notes.append(f"CD rules from {args.rules_run_dir} ({status}; {'conditional' if conditional else 'always on'})"
                     ": " + "; ".join(r.text for r in rules))
        return with_rules(task.make_program(), rules, conditional=conditional)
    if not args.cd_run_dir:
        return None
    from cd_dspy import ConceptDistillation

    cd = ConceptDistillation(**grouped(carrier="rules",  # this script measures rules
                             metric=task.metric_with_feedback, teacher_lm=teacher, target_lm=pl.serve(target),
                             num_trials=args.trials, max_mistakes=args.max_mistakes, priming=args.priming,
                             seed=args.seed, run_dir=args.cd_run_dir, num_threads=1, progress=False))
    return cd.compile(task.make_program(), trainset=task.splits["train"], valset=task.splits["val"])


def holds_rules(program: dspy.Module, ruled: dspy.Module) -> bool:
    """True when `ruled` (CD's compiled program) differs from `program` in some predictor's instructions or
    conditional rules."""
    pairs = zip(program.named_predictors(), ruled.named_predictors(), strict=True)
    return any(a.signature.instructions != b.signature.instructions or getattr(b, "conditional_rules", None)
               for (_, a), (_, b) in pairs)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    if args.estimate:
        phases = estimate(args)
        for phase, seconds in phases.items():
            print(f"{phase:>28}: {seconds / 60:6.1f} min")
        print(f"{'total':>28}: {sum(phases.values()) / 60:6.1f} min (plus the CD compile if --cd-run-dir)")
        return phases
    task = load_task(args.task, args.seed, {"train": args.train, "val": args.val, "test": args.test})
    out, lm = Path(args.out), {k: v for k, v in (("max_tokens", args.max_tokens), ("grammar", args.grammar)) if v}
    teacher = resolve_lm(args.teacher, "teacher")
    program, metric = task.make_program(), task.metric
    with adapter_context(args.adapter or TASKS[args.task].adapter):
        notes: list[str] = []
        ruled = rules_program(args, task, args.target, teacher, notes)
        if ruled is not None and not holds_rules(program, ruled):
            notes.append("CD's program holds no rules (its compile confirmed none): the rules rows are left out.")
            ruled = None
        if ruled is None:
            args.methods = [m for m in args.methods if "rules" not in m]
        kd_gguf = model_file(args.kd_teacher or args.teacher) if "kd" in args.methods else None
        records, data = pl.teacher_records(program, task.splits["train"], kd_gguf=kd_gguf, kd_top_k=args.kd_top_k,
                                           kd_n_ctx=args.kd_n_ctx, teacher_lm=teacher, metric=metric,
                                           priming=args.priming)
        files = {"train": pl.save_records(records, out / "train.jsonl")}
        primed, data_by_priming = {}, {}
        for priming in args.sft_priming:
            primed[priming], data_by_priming[priming] = pl.teacher_records(
                program, task.splits["train"], teacher_lm=teacher, metric=metric, priming=priming)
            files[f"train_{priming}"] = pl.save_records(primed[priming], out / f"train_{priming}.jsonl")
        trained = train_all(args, task, records, ruled, teacher, files, lm, primed)
        report = {"command": "python examples/distill_compare.py " + " ".join(argv or sys.argv[1:]),
                  "task": args.task, "target": args.target, "teacher": args.teacher, "priming": args.priming,
                  "splits": {k: len(v) for k, v in task.splits.items()}, "data": data,
                  "data_by_priming": data_by_priming, "files": files,
                  "min_detectable_gain": min_detectable_gain(args.test, 0.05) if args.test else None,
                  "notes": notes, "rows": {}}
        variants = []
        for method in args.methods + [f"sft:{p}" for p in args.sft_priming]:
            train_report, gguf = trained.get(method, (None, None))
            variants.append((method, ruled if method.startswith("rules") else program, gguf, train_report))
        report["rows"] = pl.held_out_rows(variants, args.target, task.splits["test"], metric, **lm)
    return write_report(out, "distill_compare", report, render)


def train_all(args, task, records, ruled, teacher, files, lm, primed) -> dict[str, tuple]:
    """The adapters the methods need: method -> (TrainReport, adapter GGUF); `primed` maps each --sft-priming
    strategy to its records (method "sft:<strategy>")."""
    wanted = [m for m in ("sft", "kd", "rules+sft") if m in args.methods]
    if not wanted and not primed:
        return {}
    model, tokenizer = load_student(args.student or args.target)
    trainer = LoraTrainer(model, tokenizer, LoraSettings(rank=args.rank, alpha=args.lora_alpha), seed=args.seed)
    settings = TrainSettings(mode="sft", epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, seed=args.seed,
                             threads=args.train_threads)
    out, trained = Path(args.out), {}
    if "sft" in wanted:
        trained["sft"] = pl.train_adapter(trainer, records, settings, out / "sft")
    if "kd" in wanted:
        if args.select_on == "loss":
            val_records, _ = pl.build_records(task.make_program(), task.splits["val"], teacher_lm=teacher,
                                              metric=task.metric, priming=args.priming)
            files["val"] = pl.save_records(val_records, out / "val.jsonl")
            score = pl.val_loss_scorer(trainer, val_records)
        else:
            score = pl.val_metric_scorer(task.make_program(), args.target, task.splits["val"], task.metric, **lm)
        report, gguf, _ = pl.choose_kd(trainer, records, settings, pl.parse_grid(args.kd_grid), out / "kd", score)
        trained["kd"] = (report, gguf)
    if "rules+sft" in wanted:
        restyled = with_student_view(records, ruled)
        files["train_rules"] = pl.save_records(restyled, out / "train_rules.jsonl")
        trained["rules+sft"] = pl.train_adapter(trainer, restyled, settings, out / "rules-sft")
    for priming, primed_records in primed.items():
        trained[f"sft:{priming}"] = pl.train_adapter(trainer, primed_records, settings, out / f"sft-{priming}")
    return trained


def sft_comparisons(rows: dict) -> list[tuple[str, dict]]:
    """Each SFT variant (rules + SFT, SFT under another priming) paired against the main SFT row, whose
    adapter differs from it only in the training data's system prompt or priming."""
    if "sft" not in rows:
        return []
    return [(m, paired_difference(row["scores"], rows["sft"]["scores"]).to_dict()) for m, row in rows.items()
            if m == "rules+sft" or m.startswith("sft:")]


def render(report: dict) -> str:
    data = report["data"]
    def sft_name(priming: str) -> str:
        return "target + SFT (" + ("unprimed" if priming == "none" else f"{priming}-primed") + " teacher)"

    names = {"none": "target, no help", "rules": "target + CD rules", "sft": sft_name(report["priming"]),
             "kd": "target + logit KD", "rules+sft": "target + CD rules + SFT",
             **{f"sft:{p}": sft_name(p) for p in report.get("data_by_priming", {})}}
    lines = [f"# Rules vs weights on {report['task']} ({report['command']})", "",
             f"Target {report['target']}, teacher {report['teacher']}, priming {report['priming']}; splits "
             f"{report['splits']}. Teacher data: {data['records']} records from {data['accepted']} of "
             f"{data['examples']} training examples ({data['rejected']} rejected by the metric, {data['failed']} "
             f"failed), {data['seconds']:.0f} s."]
    lines += [f"Teacher data primed `{p}`: {d['records']} records from {d['accepted']} of {d['examples']} "
              f"({d['rejected']} rejected, {d['failed']} failed), {d['seconds']:.0f} s."
              for p, d in report.get("data_by_priming", {}).items()]
    lines += ["", pl.TABLE_HEADER]
    lines += [pl.format_row(names[m], row) for m, row in report["rows"].items()]
    if against_sft := sft_comparisons(report["rows"]):
        lines += ["", f"Paired against {names['sft']} on the same problems (does the rule, or another priming, add "
                  "anything to SFT?): " + "; ".join(f"{names[m]} {comparison_cell(c)}" for m, c in against_sft)]
    kd = (report["rows"].get("kd") or {}).get("train") or {}
    if kd.get("extra", {}).get("kd_grid"):
        lines += ["", "KD settings (alpha, T) tried, chosen on validation data: " + ", ".join(
            f"{g['alpha']:g}/{g['temperature']:g} -> {g['validation']:.3f}" for g in kd["extra"]["kd_grid"])]
    lines += [f"\n{note}" for note in report.get("notes", [])]
    gain, n = report.get("min_detectable_gain"), report["splits"]["test"]
    if gain is not None:
        lines += ["", f"With {n} held-out examples, the smallest gain a paired sign test at 5% can tell from noise "
                  f"is about {gain:.0f} points, and only if no answer gets worse; answers that move both ways "
                  "need a larger gain." if gain <= 100 else
                  f"With {n} held-out examples, no gain can be told from noise by a paired sign test at 5%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
