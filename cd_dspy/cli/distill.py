"""`cd-dspy distill`: a primed teacher's demonstrations -> LoRA on the target (SFT or logit KD) -> a llama.cpp
LoRA adapter served by the project's engine -> held-out scores of the target with and without it.

    cd-dspy distill --task math-basic --train 32 --val 16 --test 40 --mode sft --priming ground_truth
    cd-dspy distill --task math-basic --mode kd --kd-grid 0.5:1,0.9:2 --select-on metric --out runs/kd-mb
    cd-dspy distill --rules runs/mb/program.json ...     # CD's rules in the system prompt, in training and test

Writes to --out: train.jsonl (+ train.meta.jsonl), the peft adapter and adapter.gguf, distill_result.json and
report.md. --out is a cd-dspy run directory (new, empty or an earlier distill's): a file or folder cd-dspy did not
write there is never overwritten (the run is refused before any work). Training needs `pip install "cd-dspy[distill]"`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cd_dspy.core.run_dir import RunDir


def add_parser(sub: Any) -> None:
    """Register `distill` on the `cd-dspy` subcommands."""
    from cd_dspy.core.loading import DEFAULT_TARGET, DEFAULT_TEACHER, data_arguments

    p = sub.add_parser("distill", help="distil a primed teacher into the target's weights (LoRA, SFT or logit KD)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_arguments(p)
    p.add_argument("--target", default=DEFAULT_TARGET, help="catalog name or .gguf path: the model tuned and served")
    p.add_argument("--student", help="the target's weights to train, when not its GGUF: a Hugging Face model dir")
    p.add_argument("--teacher", default=DEFAULT_TEACHER,
                   help="catalog name, .gguf path, litellm model, or simulated-solver (no model)")
    p.add_argument("--teacher-api-base")
    p.add_argument("--train", type=int, default=32, help="training examples the teacher demonstrates")
    p.add_argument("--val", type=int, default=16, help="validation examples (KD settings are chosen on them)")
    p.add_argument("--test", type=int, default=40, help="held-out examples scored with and without the adapter")
    p.add_argument("--priming", default="ground_truth",
                   help="none, teacher, confidence, ground_truth (no gold shown), gold (gold shown), or a sentence")
    p.add_argument("--rules", help="a program saved by `cd-dspy compile`: its rules sit in the system prompt")
    p.add_argument("--mode", choices=["sft", "kd"], default="sft")
    p.add_argument("--kd-teacher", help="the GGUF that scores the teacher's replies (default: --teacher)")
    p.add_argument("--kd-top-k", type=int, default=20)
    p.add_argument("--kd-n-ctx", type=int, default=2048, help="context of the scoring model (longest record)")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the KL term (1 - alpha: cross-entropy)")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--kd-grid", help="alpha:temperature pairs chosen on validation data, e.g. 0.5:1,0.5:2,0.9:2")
    p.add_argument("--select-on", choices=["metric", "loss"], default="metric",
                   help="KD grid criterion: the task metric on --val (served) or the teacher replies' loss")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lora-alpha", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (sized for a few dozen records)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=2048, help="records longer than this (tokens) are skipped")
    p.add_argument("--train-threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--max-tokens", type=int, help="the target's max_tokens when scored (default: the catalog's)")
    p.add_argument("--grammar", choices=["always", "on_failure", "never"],
                   help="the served target's JSON grammar mode (default: the engine's, always)")
    p.add_argument("--out", help="output directory (default runs/distill-<task>)")
    p.set_defaults(func=run)


def student_programs(args: Any, task: Any) -> tuple[Any, Any]:
    """(the program the teacher runs, the program the student is trained and scored with: + CD's rules)."""
    from cd_dspy.core.loading import InputError, make_program
    from cd_dspy.phases.integrate import load_program

    program = make_program(args, task)
    if not args.rules:
        return program, program
    if not Path(args.rules).is_file():
        raise InputError(f"--rules {args.rules}: no such file; pass run_dir/program.json of `cd-dspy compile`.")
    return program, load_program(make_program(args, task), args.rules, allow_unsafe_lm_state=True)


def command_line(args: Any) -> str:
    """The command with every option it ran with (defaults included), to reproduce the run."""
    skip = {"func", "command", "verbose"}
    options = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
               if k not in skip and v not in (None, False)]
    return "cd-dspy distill " + " ".join(options)


def claim_out(out: str | Path, args: Any, grid: list | None) -> RunDir:
    """--out as a run directory (`cd_dspy.core.run_dir.RunDir`) with every file and folder this run writes recorded
    in its manifest; RunDirError, before any work, when one exists that cd-dspy did not write."""
    from cd_dspy.core.run_dir import RunDir

    run = RunDir(out)
    names = ["train.jsonl", "train.meta.jsonl", "distill_result.json", "report.md"]
    if grid:
        names += [f"kd-{number}" for number in range(len(grid))]
        names += ["val.jsonl", "val.meta.jsonl"] if args.select_on == "loss" else []
    else:
        names.append(args.mode)
    run.check_free(names)
    for name in names:
        run.own(name)
    return run


def run(args: Any) -> int:
    """The whole path; prints the held-out comparison and writes distill_result.json and report.md."""
    from cd_dspy.core.loading import InputError

    try:
        return _run(args)
    except FileNotFoundError as exc:  # a missing model, adapter or program: one line, not a traceback
        raise InputError(str(exc)) from exc


def _run(args: Any) -> int:
    from cd_dspy.core.loading import InputError, load_task_and_splits, resolve_lm
    from cd_dspy.core.priming import check_priming
    from cd_dspy.distill import LoraSettings, LoraTrainer, TrainSettings, load_student
    from cd_dspy.distill import pipeline as pl

    check_priming(args.priming)
    task, splits, metric = load_task_and_splits(args)
    if not splits["train"]:
        raise InputError("--train is 0: distillation needs training examples.")
    grid = pl.parse_grid(args.kd_grid) if args.kd_grid else None
    if grid and args.mode != "kd":
        raise InputError("--kd-grid needs --mode kd.")
    settings = TrainSettings(mode=args.mode, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
                             grad_accum=args.grad_accum, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                             seed=args.seed, max_length=args.max_length, threads=args.train_threads)
    out = Path(args.out or f"runs/distill-{task.name}")
    run_dir = claim_out(out, args, grid)
    program, student_view = student_programs(args, task)
    common = {"teacher_lm": resolve_lm(args.teacher, "teacher", args.teacher_api_base), "metric": metric,
              "priming": args.priming, "student_program": student_view, "num_threads": args.threads or 1}
    started = time.perf_counter()
    records, data = _records(args, program, splits["train"], common)
    files = {"train": pl.save_records(records, out / "train.jsonl")}
    timings = {"data": round(time.perf_counter() - started, 1)}
    print(f"cd-dspy distill: {data['records']} records from {data['accepted']} of {data['examples']} training "
          f"examples (priming {data['priming']}; {data['rejected']} rejected by the metric, {data['failed']} failed)",
          file=sys.stderr)

    lm_settings = {k: v for k, v in (("max_tokens", args.max_tokens), ("grammar", args.grammar)) if v}
    started = time.perf_counter()
    model, tokenizer = load_student(args.student or args.target)
    trainer = LoraTrainer(model, tokenizer, LoraSettings(rank=args.rank, alpha=args.lora_alpha), seed=args.seed)
    timings["load_student"] = round(time.perf_counter() - started, 1)
    if grid:
        if args.select_on == "loss":
            val_records, _ = pl.build_records(program, splits["val"], **common)
            files["val"] = pl.save_records(val_records, out / "val.jsonl")
            score = pl.val_loss_scorer(trainer, val_records, args.max_length)
        else:
            score = pl.val_metric_scorer(student_view, args.target, splits["val"], metric, **lm_settings)
        report, gguf, _ = pl.choose_kd(trainer, records, settings, grid, out, score)
    else:
        report, gguf = pl.train_adapter(trainer, records, settings, out / args.mode)

    rules = " + CD rules" if args.rules else ""
    served = [(f"target{rules}", student_view, None, None),
              (f"target{rules} + {args.mode.upper()} adapter", student_view, gguf, report)]
    rows = pl.held_out_rows(served, args.target, splits["test"], metric, **lm_settings) if splits["test"] else {}
    result = {"command": command_line(args), "task": task.name, "splits": {k: len(v) for k, v in splits.items()},
              "target": args.target, "teacher": args.teacher, "priming": args.priming, "mode": args.mode,
              "rules": args.rules, "data": data, "files": files, "adapter_gguf": str(gguf),
              "training": report.to_dict(), "held_out": rows, "seconds": timings}
    run_dir.write_text("distill_result.json", json.dumps(result, indent=2, default=str) + "\n")
    run_dir.write_text("report.md", render(result))
    print(render(result))
    return 0


def _records(args: Any, program: Any, examples: list, common: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """The teacher's records on `examples`, scored for KD by the teacher's GGUF in --mode kd."""
    from cd_dspy.core.loading import InputError
    from cd_dspy.distill.pipeline import teacher_records
    from cd_dspy.distill.student import model_file

    gguf = None
    if args.mode == "kd":
        try:
            gguf = model_file(args.kd_teacher or args.teacher)
        except FileNotFoundError as exc:
            raise InputError(f"{exc} KD scores the teacher's replies with a local GGUF: pass --kd-teacher PATH or a "
                           "catalog name.") from exc
    return teacher_records(program, examples, kd_gguf=gguf, kd_top_k=args.kd_top_k, kd_n_ctx=args.kd_n_ctx, **common)


def render(result: dict[str, Any]) -> str:
    """The result as Markdown: what was trained on, and the held-out table."""
    from cd_dspy.distill.pipeline import TABLE_HEADER, format_row

    data, training = result["data"], result["training"]
    lines = [f"# Distillation: {result['task']}, {result['mode'].upper()}, priming {result['priming']}", "",
             f"`{result['command']}`", "",
             f"Data: {data['records']} records from {data['accepted']} of {data['examples']} training examples "
             f"({data['rejected']} rejected by the metric, {data['failed']} failed); adapter {result['adapter_gguf']}.",
             f"Training: {training['steps']} steps, loss {training['loss_before']:.3f} -> "
             f"{training['loss_after']:.3f}, {training['seconds']:.0f} s, peak {training['peak_rss_mb']:.0f} MB.",
             "", TABLE_HEADER]
    lines += [format_row(name, row) for name, row in result["held_out"].items()]
    grid = training.get("extra", {}).get("kd_grid")
    if grid:
        lines += ["", "KD settings tried (chosen on validation data):", "",
                  "| alpha | temperature | validation | training time |", "|---|---|---|---|"]
        lines += [f"| {g['alpha']:g} | {g['temperature']:g} | {g['validation']:.4f} | {g['train_seconds']:.0f} s |"
                  for g in grid]
    return "\n".join(lines) + "\n"
