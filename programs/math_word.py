"""Math word problems: the solver program, tolerant number parsing, metrics, and data sources."""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
from fractions import Fraction
from pathlib import Path
from typing import Any

import dspy

__all__ = [
    "KINDS", "DatasetUnavailableError", "MathSolver", "SolveWordProblem", "generate_problems",
    "load_gsm8k", "load_math_jsonl", "load_multiarith", "math_splits", "numeric_match",
    "numeric_match_with_feedback", "parse_number",
]


class SolveWordProblem(dspy.Signature):
    """Solve the math word problem. Give the final numeric answer."""

    question: str = dspy.InputField()
    answer: float = dspy.OutputField()


class MathSolver(dspy.Module):
    """Chain-of-thought solver for one word problem."""

    def __init__(self) -> None:
        super().__init__()
        self.solve = dspy.ChainOfThought(SolveWordProblem)

    def forward(self, question: str) -> dspy.Prediction:
        return self.solve(question=question)


# ----------------------------------------------------------------------------- parsing and metrics

_NUM = re.compile(
    r"(?<![\w.])(-|−)?\s?\$?\s?"
    r"((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(\d+(?:\.\d+)?))?"
    r"([eE][-+]?\d+)?"
)


def parse_number(text: Any) -> float | None:
    """Parse a model's number ('$1,234.50', '12 apples', '3/4', '1e3', '42%'); the LAST number in prose."""
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return None if math.isnan(float(text)) else float(text)
    s = str(text)
    if "####" in s:
        s = s.split("####")[-1]
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", s)
    if boxed:
        s = boxed[-1]
    matches = list(_NUM.finditer(s))
    if not matches:
        return None
    m = matches[-1]
    sign = -1.0 if m.group(1) else 1.0
    try:
        value = float(m.group(2).replace(",", "") + (m.group(4) or ""))
        if m.group(3):
            den = float(m.group(3))
            if den == 0:
                return None
            value /= den
    except ValueError:
        return None
    return sign * value


def _close(got: float, gold: float) -> bool:
    return abs(got - gold) <= max(1e-6, 1e-6 * abs(gold))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def numeric_match_with_feedback(example, pred, trace=None) -> dspy.Prediction:
    """Score 1/0 plus feedback such as 'expected 42, got 40.5'."""
    gold = parse_number(example.answer)
    raw = getattr(pred, "answer", None) if not isinstance(pred, dict) else pred.get("answer")
    got = parse_number(raw)
    if gold is None:
        raise ValueError(f"gold answer {example.answer!r} is not a number; fix the dataset")
    if got is None:
        msg = f"could not find a number in the answer {str(raw)[:80]!r}; expected {_fmt(gold)}"
        return dspy.Prediction(score=0.0, feedback=msg)
    if _close(got, gold):
        return dspy.Prediction(score=1.0, feedback=f"correct: {_fmt(gold)}")
    return dspy.Prediction(score=0.0, feedback=f"expected {_fmt(gold)}, got {_fmt(got)}")


def numeric_match(example, pred, trace=None) -> float:
    """1.0 when the predicted number equals the gold answer (1e-6 relative / absolute tolerance)."""
    return float(numeric_match_with_feedback(example, pred, trace).score)


# ----------------------------------------------------------------------------- generated problems

KINDS = ("discount_tax", "percent_increase", "percent_chain", "hours_minutes", "cm_to_m", "speed_time",
         "work_rate", "ceil_division", "remainder", "how_many_more", "elapsed_time", "multi_step_total")
# One- or two-step kinds a 0.5B model can often solve, but with systematic slips (rounding, units, clocks).
BASIC_KINDS = ("ceil_division", "remainder", "elapsed_time", "sale_price", "minutes_total", "difference")
_NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara")
_ITEMS = ("apples", "marbles", "stickers", "cookies", "pencils", "cards", "books", "shells", "stamps",
          "beads")
_GOODS = ("jacket", "bike", "lamp", "backpack", "chair", "guitar", "tent", "camera", "desk", "kettle")
_GROUPS = (("students", "vans"), ("campers", "buses"), ("guests", "tables"), ("players", "cars"),
           ("workers", "boats"), ("fans", "minibuses"))


def _exact(x: Fraction) -> bool:
    return (x * 100).denominator == 1


def _clock(minutes: int) -> str:
    h, m = divmod(minutes % (24 * 60), 60)
    return f"{(h % 12) or 12}:{m:02d} {'AM' if h < 12 else 'PM'}"


def _gen_one(kind: str, r: random.Random) -> tuple[str, Fraction]:  # noqa: C901 - one branch per kind
    n1, n2 = r.sample(_NAMES, 2)
    item, good = r.choice(_ITEMS), r.choice(_GOODS)
    if kind == "discount_tax":
        p, d, t = r.randrange(20, 401, 4), r.choice([10, 15, 20, 25, 30, 40, 50]), r.choice([5, 6, 8, 10, 12])
        return (f"{n1} buys a {good} priced at ${p}. The store gives a {d}% discount, and then a {t}% sales "
                f"tax is added to the discounted price. How many dollars does {n1} pay?",
                Fraction(p) * (100 - d) / 100 * (100 + t) / 100)
    if kind == "percent_increase":
        a, pct = r.randrange(40, 2001, 20), r.choice([5, 10, 15, 20, 25, 30, 35, 40, 50, 75, 120])
        b = Fraction(a) * (100 + pct) / 100
        return (f"Last year a club had {a} members. This year it has {b} members. By what percent did the "
                f"number of members increase?", Fraction(pct))
    if kind == "percent_chain":
        p, up, down = r.randrange(50, 1001, 10), r.choice([10, 20, 25, 50]), r.choice([10, 20, 25, 50])
        return (f"A {good} costs ${p}. Its price is raised by {up}%, and a month later the new price is "
                f"lowered by {down}%. What is the final price in dollars?",
                Fraction(p) * (100 + up) / 100 * (100 - down) / 100)
    if kind == "hours_minutes":
        h1, h2, m1, m2 = r.randint(1, 6), r.randint(1, 6), r.randrange(3, 60, 3), r.randrange(3, 60, 3)
        return (f"{n1} practised piano for {h1} hours and {m1} minutes on Saturday and {h2} hours and {m2} "
                f"minutes on Sunday. How many hours did {n1} practise in total? Answer in hours.",
                Fraction(h1 + h2) + Fraction(m1 + m2, 60))
    if kind == "cm_to_m":
        a, b, c = r.randrange(150, 901, 5), r.randrange(10, 141, 5), r.randint(1, 9)
        return (f"{n1} has a ribbon {a} cm long, cuts off {b} cm, and then ties the rest to another ribbon "
                f"that is {c} m long. How long is the joined ribbon in meters?", Fraction(a - b, 100) + c)
    if kind == "speed_time":
        v, h, m = r.randrange(30, 121, 6), r.randint(0, 4), r.choice([10, 15, 20, 30, 40, 45, 50])
        return (f"A train travels at {v} km/h for {h} hours and {m} minutes without stopping. How many "
                f"kilometers does it travel?", v * (h + Fraction(m, 60)))
    if kind == "work_rate":
        a, b = r.sample([2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 24], 2)
        return (f"{n1} can paint a fence alone in {a} hours, and {n2} can paint the same fence alone in {b} "
                f"hours. Working together at these rates, how many hours will they take?",
                Fraction(a * b, a + b))
    if kind == "ceil_division":
        people, vehicle = r.choice(_GROUPS)
        k = r.randint(4, 15)
        n = k * r.randint(2, 12) + r.randint(1, k - 1)
        return (f"{n} {people} are going on a trip. Each of the {vehicle} holds at most {k} {people}. How "
                f"many {vehicle} are needed to take everyone?", Fraction(-(-n // k)))
    if kind == "remainder":
        k = r.randint(3, 12)
        n = k * r.randint(3, 30) + r.randint(1, k - 1)
        return (f"{n1} has {n} {item} and packs them into bags of {k}. After filling as many full bags as "
                f"possible, how many {item} are left over?", Fraction(n % k))
    if kind == "how_many_more":
        x, mult, given = r.randint(5, 40), r.randint(2, 5), r.randint(1, 4)
        return (f"{n1} has {x} {item}. {n2} has {mult} times as many {item} as {n1}, and then gives {given} "
                f"of them away. How many more {item} does {n2} now have than {n1}?",
                Fraction(mult * x - given - x))
    if kind == "elapsed_time":
        start = r.randrange(6 * 60, 18 * 60, 5)  # ends by 11 PM: no midnight crossing
        end = start + r.randrange(35, 300, 5)
        return (f"A film festival screening starts at {_clock(start)} and ends at {_clock(end)} the same "
                f"day. How many minutes long is it?", Fraction(end - start))
    if kind == "sale_price":
        p, d = r.randrange(20, 301, 10), r.choice([10, 20, 25, 30, 40, 50])
        return (f"A {good} costs ${p} and is {d}% off. What is the sale price in dollars?",
                Fraction(p) * (100 - d) / 100)
    if kind == "minutes_total":
        h, m = r.randint(1, 4), r.randrange(5, 60, 5)
        return (f"A movie lasts {h} hours and {m} minutes. How many minutes long is the movie?", Fraction(60 * h + m))
    if kind == "difference":
        a, b = sorted(r.sample(range(8, 95), 2))
        return (f"{n1} has {a} {item} and {n2} has {b} {item}. How many more {item} does {n2} have than {n1}?",
                Fraction(b - a))
    if kind == "multi_step_total":
        a, b = r.randint(2, 9), r.randint(2, 9)
        p, q = Fraction(r.randrange(100, 801, 25), 100), Fraction(r.randrange(50, 401, 5), 100)
        cost = a * p + b * q
        bill = next(x for x in (20, 50, 100) if x > cost)
        return (f"{n1} buys {a} notebooks at ${float(p):.2f} each and {b} pens at ${float(q):.2f} each, and "
                f"pays with a ${bill} bill. How much change, in dollars, does {n1} get?", bill - cost)
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS + BASIC_KINDS}")


def generate_problems(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list:
    """`n` distinct seeded word problems (round-robin over `kinds`) with exact answers (<= 2 decimals)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    r, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct problems; ask for fewer")
        kind = kinds[len(out) % len(kinds)]
        q, ans = _gen_one(kind, r)
        if q in seen or not _exact(ans) or ans < 0:
            continue
        seen.add(q)
        out.append(dspy.Example(question=q, answer=float(ans), kind=kind).with_inputs("question"))
    r.shuffle(out)
    return out


# ----------------------------------------------------------------------------- data


def math_splits(seed: int = 0, n_train: int = 200, n_val: int = 100, n_test: int = 200,
                kinds: tuple[str, ...] = KINDS) -> dict[str, list]:
    """Disjoint train/val/test splits of the generated set (no question appears twice)."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    pool = generate_problems(n_train + n_val + n_test, seed, kinds)
    return {"train": pool[:n_train], "val": pool[n_train:n_train + n_val], "test": pool[n_train + n_val:]}


class DatasetUnavailableError(RuntimeError):
    """A hub dataset could not be loaded; pass a local JSONL path instead."""


_Q_KEYS = ("question", "input", "problem", "Question")
_A_KEYS = ("answer", "final_ans", "target", "Answer")


def load_math_jsonl(path: str | os.PathLike, kind: str = "jsonl") -> list:
    """Load a JSONL of {question, answer}; GSM8K '... #### 42' answers keep the text before as `rationale`."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"math JSONL not found: {p}")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{i}: not valid JSON ({e})") from e
        out.append(_row_to_example(row, f"{p}:{i}", kind))
    return out


def _row_to_example(row: dict, where: str, kind: str):
    q = next((row[k] for k in _Q_KEYS if k in row), None)
    a = next((row[k] for k in _A_KEYS if k in row), None)
    if q is None or a is None:
        raise ValueError(f"{where}: needs 'question' and 'answer' fields, got keys {sorted(row)}")
    rationale = ""
    if isinstance(a, str) and "####" in a:
        rationale, a = a.rsplit("####", 1)
    value = parse_number(a)
    if value is None:
        raise ValueError(f"{where}: answer {a!r} is not a number")
    return dspy.Example(question=str(q), answer=value, kind=kind, rationale=rationale.strip()).with_inputs(
        "question")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(name: str, config: str | None, split: str, kind: str, path: str | None) -> list:
    if path is not None:
        return load_math_jsonl(path, kind=kind)
    hint = (f"pass a local JSONL with 'question'/'answer' fields instead, e.g. "
            f"load_{kind}({split!r}, path='{kind}_{split}.jsonl') or --data PATH")
    if not _hub_reachable():
        raise DatasetUnavailableError(f"cannot load {name} ({split}): the Hugging Face hub is unreachable "
                                      f"or offline mode is set; {hint}")
    try:
        import datasets

        args = (name, config) if config else (name,)
        ds = datasets.load_dataset(*args, split=split)
    except Exception as e:  # noqa: BLE001 - any hub/parsing failure gets the same advice
        raise DatasetUnavailableError(f"cannot load {name} ({split}): {e}; {hint}") from e
    return [_row_to_example(dict(r), f"{name}[{i}]", kind) for i, r in enumerate(ds)]


def load_gsm8k(split: str = "test", path: str | None = None) -> list:
    """GSM8K split from the hub (openai/gsm8k), or from a local JSONL when `path` is given."""
    return _load_hub("openai/gsm8k", "main", split, "gsm8k", path)


def load_multiarith(split: str = "test", path: str | None = None) -> list:
    """MultiArith split from the hub (ChilleD/MultiArith), or from a local JSONL when `path` is given."""
    return _load_hub("ChilleD/MultiArith", None, split, "multiarith", path)
