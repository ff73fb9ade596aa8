"""Resolving what a user names on the command line or in a worker spec: LMs, tasks, programs, attributes.

Below the CLI, so that workers, distillation and migration use the same resolution without importing it.
Every name that cannot be resolved raises `InputError`, whose message names the problem and the fix.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

DEFAULT_TARGET = "qwen2.5-coder-0.5b"
DEFAULT_TEACHER = "qwen2.5-coder-1.5b"
# Named stand-ins for offline runs: deterministic simulated LMs of the test harness, loaded by name only.
LM_ALIASES = {"simulated-target": "cd_dspy.testing.simulated:SimulatedTarget",
              "simulated-teacher": "cd_dspy.testing.simulated:SimulatedTeacher",
              "simulated-solver": "cd_dspy.testing.solving_teacher:solving_teacher_lm"}


class InputError(ValueError):
    """A name or value given by the user that cannot be used (the CLI reports it in one line, exit code 2)."""


def load_attribute(spec: str) -> Any:
    """`package.module:attribute` → the attribute."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InputError(f"{spec!r} is not of the form 'package.module:attribute'.")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load {spec!r}: {exc}; the module must be importable here (installed, or on "
                         "sys.path), the same code on every worker.") from exc


def resolve_lm(spec: str, role: str, api_base: str | None = None):
    """A catalog name or .gguf path → an embedded local LM; a simulated stand-in's name → that LM; anything else
    → a litellm model string."""
    import dspy

    from cd_dspy.lms.catalog import CATALOG

    if spec in LM_ALIASES:  # an LM, or an engine to wrap in one
        made = load_attribute(LM_ALIASES[spec])()
        return made if isinstance(made, dspy.BaseLM) else dspy.LM(f"simulated/{spec}", engine=made, cache=False)
    if spec in CATALOG or spec.endswith(".gguf"):
        from cd_dspy.lms import local_lm

        return local_lm(spec, role=role)
    if "/" not in spec:
        raise InputError(f"unknown model {spec!r}: use a catalog name ({', '.join(CATALOG)}), a .gguf path, "
                         "or a litellm model string such as 'openai/gpt-4o-mini'.")
    kwargs: dict[str, Any] = {"api_base": api_base} if api_base else {}
    return dspy.LM(spec, **kwargs)


def make_program(args: Any, task: Any):
    """The task's program, or a fresh instance of `args.program` (a Module class, factory or instance)."""
    import dspy

    if not args.program:
        return task.make_program()
    found = load_attribute(args.program)
    program = found.deepcopy() if isinstance(found, dspy.Module) else found() if callable(found) else found
    if not isinstance(program, dspy.Module):
        raise InputError(f"--program {args.program} gave a {type(program).__name__}, not a dspy.Module.")
    return program


def load_task_and_splits(args: Any) -> tuple[Any, dict[str, list], Any]:
    """(the task named by `args.task`, its seeded splits at the sizes asked for, the metric to use)."""
    from cd_dspy.programs import get_task

    try:
        task = get_task(args.task)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    sizes = {k: v for k, v in (("train", getattr(args, "train", None)), ("val", getattr(args, "val", None)),
                               ("test", getattr(args, "test", None))) if v is not None}
    splits = task.load_splits(seed=args.seed, sizes=sizes, path=args.data)
    metric = load_attribute(args.metric) if args.metric else task.metric
    return task, splits, metric


def chosen_adapter(args: Any) -> str:
    """args.adapter, else the task's default (the harness measured best for it), else json."""
    if getattr(args, "adapter", None):
        return args.adapter
    from cd_dspy.programs import TASKS

    task = TASKS.get(getattr(args, "task", None) or "")
    return task.adapter if task else "json"


def adapter_context(name: str):
    """A `dspy.context` with the chosen adapter (nothing here changes DSPy's global settings)."""
    import dspy

    from cd_dspy.programs import make_adapter

    return dspy.context(adapter=make_adapter(name))


def data_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name a task, its data and seed, and the adapter (read by `load_task_and_splits`)."""
    parser.add_argument("--task", default="math-basic",
                        help="built-in task: math-basic, math, math-plan, humaneval, gsm8k, multiarith, simulated")
    parser.add_argument("--program", help="a program instead of the task's: 'package.module:ProgramClass'")
    parser.add_argument("--metric", help="a metric instead of the task's: 'package.module:metric'")
    parser.add_argument("--data", help="a local JSONL file (question/answer) for math-style tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="parallel LM calls (default: 1 for embedded models, else DSPy's num_threads)")
    from cd_dspy.programs import ADAPTERS

    parser.add_argument("--adapter", choices=ADAPTERS, default=None,
                        help="DSPy adapter (default: the task's measured best; json: grammar-constrained JSON; "
                        "plain: one plain request for code signatures)")


def split_size_arguments(parser: argparse.ArgumentParser, test: int) -> None:
    """--train, --val (the defaults of `cd-dspy migrate`) and --test (default `test`)."""
    parser.add_argument("--train", type=int, default=24, help="training examples (the target's mistakes)")
    parser.add_argument("--val", type=int, default=40, help="validation examples (search and confirmation)")
    parser.add_argument("--test", type=int, default=test, help="held-out test examples")
