"""The simulated task: four kinds of word problem (add, percent, units, vans), its seeded splits and metric.

The data of the simulated world; the deterministic LMs that play in it are the test harness's
(`cd_dspy.testing.simulated`).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import dspy

TEMPLATES = {
    "add": ("{name} has {a} marbles and finds {b} more. How many marbles does {name} have?",
            lambda a, b: a + b),
    "percent": ("A coat costs {a} dollars and is {b} percent off. What does the coat cost now?",
                lambda a, b: round(a * (100 - b) / 100, 2)),
    "units": ("A trip takes {a} hours and {b} minutes. How long is the trip in hours?",
              lambda a, b: round(a + b / 60, 4)),
    "vans": ("{a} people travel in vans that hold {b} people each. How many vans are needed?",
             lambda a, b: math.ceil(a / b)),
}
_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Finn"]


def make_problem(kind: str, rng: random.Random) -> dspy.Example:
    template, solve = TEMPLATES[kind]
    a, b = {"add": (rng.randint(3, 60), rng.randint(3, 40)),
            "percent": (rng.choice(range(30, 200, 10)), rng.choice([10, 15, 20, 25, 30, 40])),
            "units": (rng.randint(1, 9), rng.choice([15, 30, 45])),
            "vans": (rng.randint(11, 97), rng.choice([4, 6, 7, 9]))}[kind]
    if kind == "vans" and a % b == 0:
        a += 1
    question = template.format(name=rng.choice(_NAMES), a=a, b=b)
    return dspy.Example(question=question, answer=float(solve(a, b)), kind=kind).with_inputs("question")


def simulated_dataset(n: int, seed: int = 0) -> list[dspy.Example]:
    """`n` problems cycling through the kinds, seeded."""
    rng = random.Random(seed)
    kinds = list(TEMPLATES)
    return [make_problem(kinds[i % len(kinds)], rng) for i in range(n)]


def simulated_splits(*sizes: int, seed: int = 0) -> list[list[dspy.Example]]:
    """Disjoint problem sets of the given sizes (no question appears twice), each cycling the kinds."""
    rng, kinds, seen = random.Random(seed), list(TEMPLATES), set()
    splits, draws = [], 0
    for size in sizes:
        split: list[dspy.Example] = []
        while len(split) < size:
            draws += 1
            if draws > 200 * sum(sizes):  # a kind has fewer distinct problems than asked for (units: 27)
                raise ValueError(f"cannot make {sum(sizes)} distinct simulated problems (seed {seed}); ask for fewer.")
            example = make_problem(kinds[len(split) % len(kinds)], rng)
            if example.question not in seen:
                seen.add(example.question)
                split.append(example)
        splits.append(split)
    return splits


def answer_match(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    try:
        return abs(float(prediction.answer) - float(example.answer)) < 1e-6
    except (TypeError, ValueError, AttributeError):
        return False


def kind_of(question: str) -> str | None:
    for kind, (template, _) in TEMPLATES.items():
        pattern = re.escape(template).replace(r"\{name\}", r"\w+")
        pattern = pattern.replace(r"\{a\}", r"(\d+)").replace(r"\{b\}", r"(\d+)")
        if re.search(pattern, question):
            return kind
    return None


def numbers_of(question: str) -> tuple[int, int]:
    a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    return a, b
