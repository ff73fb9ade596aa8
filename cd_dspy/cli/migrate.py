"""`cd-dspy migrate` and `cd-dspy rulebook export|check` (registered by `cd_dspy.cli.main`).

    cd-dspy migrate --task math-basic --source qwen2.5-coder-1.5b --target qwen2.5-coder-0.5b \\
        --train 24 --val 40 --test 80 --run-dir runs/migrate-math-basic
    cd-dspy migrate --task simulated --source simulated-teacher --target simulated-target --run-dir runs/sim
    cd-dspy migrate --task simulated --source simulated-teacher --target simulated-target --levers cd,demos ...
    cd-dspy rulebook export runs/migrate-math-basic --all -o rules.yaml
    cd-dspy rulebook check rules.yaml --task math-basic --lm qwen2.5-coder-0.5b --test 80
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cd_dspy.cli.common import add_cd_arguments, cd_settings
from cd_dspy.core.keys import lm_state
from cd_dspy.core.loading import (
    InputError,
    data_arguments,
    load_task_and_splits,
    make_program,
    resolve_lm,
    split_size_arguments,
)
from cd_dspy.migration.levers import LEVERS, parse_levers


def _levers(text: str) -> list[str]:
    """--levers: names from LEVERS, comma-separated, or all; an unknown name is an error naming the choices."""
    try:
        return parse_levers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("in levers", "in --levers")) from None


def add_parser(subparsers) -> None:
    """Add the `migrate` and `rulebook` subcommands to the `cd-dspy` parser."""
    mig = subparsers.add_parser("migrate", help="can this program move to a cheaper model? compile for the target "
                                "with each lever (CD, teacher demos, LoRA SFT, ...) and compare them with the source "
                                "and the target as is on held-out data")
    data_arguments(mig)
    mig.add_argument("--source", required=True, help="today's model: catalog name, .gguf path or litellm model")
    mig.add_argument("--target", required=True, help="the cheaper model")
    mig.add_argument("--teacher", help="the model that explains the target's mistakes (default: the source)")
    for role in ("source", "target", "teacher"):
        mig.add_argument(f"--{role}-api-base", help=f"an OpenAI-compatible server for the {role}")
    split_size_arguments(mig, test=80)
    mig.add_argument("--run-dir", required=True, help="compile, test records and report (a rerun resumes)")
    mig.add_argument("--prices", help="price table, JSON or YAML: {model: [input $/Mtok, output $/Mtok]}")
    mig.add_argument("--levers", default="all", type=_levers,
                     help=f"levers to compare, comma-separated: {', '.join(LEVERS)} (default: all; those that do "
                     "not apply to the target are listed as not applicable with the reason)")
    add_cd_arguments(mig)  # --auto, --trials, --max-mistakes, ... (shared with compile)
    mig.set_defaults(func=run)

    book = subparsers.add_parser("rulebook", help="export a run's rules as an editable YAML rulebook, or check one "
                                 "on another LM")
    books = book.add_subparsers(dest="rulebook_command", required=True)
    export = books.add_parser("export", help="write the rules of a compile or migrate run dir as a YAML rulebook")
    export.add_argument("run_dir", help="a compile's --run-dir (or a migrate run dir)")
    export.add_argument("-o", "--out", help="the YAML file (default: RUN_DIR/rulebook.yaml)")
    export.add_argument("--force", action="store_true",
                        help="replace an existing --out file that cd-dspy did not write (it is refused otherwise)")
    export.add_argument("--all", action="store_true",
                        help="also the rules not selected (as free) and those verification rejected (as dropped)")
    export.set_defaults(func=run_export)
    check = books.add_parser("check", help="apply a rulebook to a model (no teacher): held-out scores with and "
                             "without its rules, paired test")
    check.add_argument("rulebook")
    data_arguments(check)
    check.add_argument("--lm", required=True, help="the model to check the rules on")
    check.add_argument("--api-base")
    split_size_arguments(check, test=40)
    check.add_argument("--run-dir", help="keep the per-example records here (a rerun repeats no call)")
    check.add_argument("--conditional-rules", action="store_true", help="show each rule only where its condition holds")
    check.add_argument("--quiet", action="store_true")
    check.set_defaults(func=run_check)


def _lms(args):
    """(source, target, teacher). The source runs the program with the settings the target runs it with (an
    embedded model's target-role max_tokens), so the two are compared on equal terms; the teacher defaults to
    the source model with the teacher's settings (one loaded model serves both), or is the source object itself
    where the role changes nothing (API and simulated models)."""
    source = resolve_lm(args.source, "target", args.source_api_base)
    target = resolve_lm(args.target, "target", args.target_api_base)
    same = args.teacher in (None, args.source) and args.teacher_api_base in (None, args.source_api_base)
    teacher = resolve_lm(args.source if same else args.teacher, "teacher",
                         args.source_api_base if same else args.teacher_api_base)
    if same and lm_state(teacher) == lm_state(source):
        teacher = source
    return source, target, teacher


def run(args) -> int:
    """`cd-dspy migrate`."""
    from cd_dspy.migration.api import migrate

    if args.source == args.target and args.source_api_base == args.target_api_base:
        raise InputError(f"--source and --target are both {args.source}: name the cheaper model as --target.")
    if args.test < 1:
        raise InputError("--test must be at least 1: the migration is judged on held-out examples (80 or more give "
                       "intervals narrow enough to act on).")
    task, splits, metric = load_task_and_splits(args)
    source, target, teacher = _lms(args)
    print(f"cd-dspy migrate: task {task.name}: {len(splits['train'])} train / {len(splits['val'])} val / "
          f"{len(splits['test'])} test; source {args.source}, target {args.target}, teacher "
          f"{args.teacher or args.source}; run dir {args.run_dir}", file=sys.stderr)
    report = migrate(make_program(args, task), source_lm=source, target_lm=target, teacher_lm=teacher, metric=metric,
                     trainset=splits["train"], valset=splits["val"] or None, testset=splits["test"],
                     run_dir=args.run_dir, prices=args.prices, num_threads=args.threads, progress=not args.quiet,
                     levers=args.levers, seed=args.seed, **cd_settings(args))
    print(report.verdict)
    print("\n".join(f"  {line}" for line in report.details))
    for warning in report.compile.get("warnings", []):  # shown here only: the console log skips them
        print(f"  warning: {warning}")
    book = f"; rulebook: {report.files['rulebook']}" if report.rules else ""
    print(f"report: {report.files['html']}  (Markdown: {report.files['markdown']}{book})")
    return 0


def run_export(args) -> int:
    """`cd-dspy rulebook export`."""
    from cd_dspy.phases.rulebook import export_rulebook

    run_dir = Path(args.run_dir)
    compile_dir = run_dir / "compile" if (run_dir / "compile" / "result.json").exists() else run_dir
    out = Path(args.out) if args.out else run_dir / "rulebook.yaml"
    book = export_rulebook(compile_dir, out, all_rules=args.all, overwrite=args.force)
    counts = {s: sum(r.status == s for r in book.rules) for s in ("pinned", "free", "dropped")}
    print(f"rulebook: {out} ({counts['pinned']} pinned, {counts['free']} free, {counts['dropped']} dropped)")
    return 0


def run_check(args) -> int:
    """`cd-dspy rulebook check`."""
    from cd_dspy.migration.transfer import check_rulebook

    task, splits, metric = load_task_and_splits(args)
    if not splits["test"]:
        raise InputError("--test must be at least 1: the check scores held-out examples with and without the rules.")
    lm = resolve_lm(args.lm, "target", args.api_base)
    check = check_rulebook(make_program(args, task), args.rulebook, lm, metric, splits["test"], run_dir=args.run_dir,
                           num_threads=args.threads, conditional=args.conditional_rules, progress=not args.quiet)
    print(check.describe())
    return 0
