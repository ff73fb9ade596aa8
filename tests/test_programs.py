"""Programs, data, metrics and the task registry (no LM is called)."""

from __future__ import annotations

import json
import math
import re
import time
from fractions import Fraction

import dspy
import pytest

from cd_dspy.programs import TASKS, get_task
from cd_dspy.programs.humaneval import (
    build_program,
    extract_code,
    humaneval_metric,
    humaneval_metric_with_feedback,
    load_humaneval,
)
from cd_dspy.programs.math_word import (
    KINDS,
    DatasetUnavailableError,
    MathSolver,
    generate_problems,
    load_gsm8k,
    load_math_jsonl,
    load_multiarith,
    math_splits,
    numeric_match,
    numeric_match_with_feedback,
    parse_number,
)
from cd_dspy.programs.pipelines import PlanThenSolve

# ----------------------------------------------------------------------------- generator


def test_generator_deterministic_and_seed_dependent():
    a, b, c = generate_problems(60, seed=1), generate_problems(60, seed=1), generate_problems(60, seed=2)
    assert [(e.question, e.answer, e.kind) for e in a] == [(e.question, e.answer, e.kind) for e in b]
    assert [e.question for e in a] != [e.question for e in c]


def test_generator_examples_shape_and_coverage():
    probs = generate_problems(240, seed=0)
    assert len({p.question for p in probs}) == 240
    assert {p.kind for p in probs} == set(KINDS)
    for p in probs:
        assert isinstance(p.answer, float) and p.answer >= 0
        assert round(p.answer, 2) == p.answer  # at most 2 decimals
        assert set(p.inputs().keys()) == {"question"}


def _ints(q: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", q)]


def test_answers_recomputed_independently():
    probs = generate_problems(360, seed=3)
    checked = set()
    for p in probs:
        q, k = p.question, p.kind
        if k == "ceil_division":
            n, m = _ints(q)[:2]
            assert p.answer == math.ceil(n / m)
        elif k == "remainder":
            n, m = _ints(q)[:2]
            assert p.answer == n % m
        elif k == "discount_tax":
            price, d, t = _ints(q)[:3]
            assert p.answer == pytest.approx(price * (1 - d / 100) * (1 + t / 100))
        elif k == "work_rate":
            a, b = _ints(q)[:2]
            assert p.answer == pytest.approx(1 / (1 / a + 1 / b))
        elif k == "hours_minutes":
            h1, m1, h2, m2 = _ints(q)[:4]
            assert p.answer == pytest.approx(h1 + h2 + (m1 + m2) / 60)
        elif k == "elapsed_time":
            (h1, m1, h2, m2), (p1, p2) = _ints(q)[:4], re.findall(r"[AP]M", q)
            clock = ((h1, m1, p1), (h2, m2, p2))
            to_min = [(h % 12 + (12 if ap == "PM" else 0)) * 60 + m for h, m, ap in clock]
            assert p.answer == to_min[1] - to_min[0]
        elif k == "speed_time":
            v, h, m = _ints(q)[:3]
            assert Fraction(p.answer).limit_denominator(100) == v * (h + Fraction(m, 60))
        else:
            continue
        checked.add(k)
    assert len(checked) == 7


def test_math_splits_disjoint_and_sized():
    s = math_splits(seed=0, n_train=50, n_val=30, n_test=40)
    assert [len(s[k]) for k in ("train", "val", "test")] == [50, 30, 40]
    qs = [set(e.question for e in s[k]) for k in ("train", "val", "test")]
    assert not (qs[0] & qs[1]) and not (qs[0] & qs[2]) and not (qs[1] & qs[2])
    with pytest.raises(ValueError, match="n_val"):
        math_splits(n_val=-1)


# ----------------------------------------------------------------------------- parsing + metric

PARSE_CASES = [
    ("$1,234.50", 1234.5), ("12 apples", 12.0), ("3/4", 0.75), ("1e3", 1000.0), ("-5", -5.0),
    ("The answer is 42.", 42.0), ("42%", 42.0), ("5 km", 5.0), ("so 3 + 4 = 7 apples", 7.0),
    ("#### 1,000", 1000.0), (r"The result is \boxed{17}", 17.0), (".5", 0.5), ("−3", -3.0),
    ("1,000,000", 1_000_000.0), ("2.50 dollars", 2.5), ("answer: 12.5 hours", 12.5), ("1.5e-2", 0.015),
    ("10 - 4 = 6", 6.0), ("-$20", -20.0), (7, 7.0), (3.25, 3.25),
    ("no number here", None), ("", None), (None, None),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_number(text, expected):
    got = parse_number(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_numeric_match_and_feedback():
    ex = dspy.Example(question="q", answer=42.0).with_inputs("question")
    assert numeric_match(ex, dspy.Prediction(answer=42.0)) == 1.0
    assert numeric_match(ex, dspy.Prediction(answer="The answer is $42.")) == 1.0
    assert numeric_match(ex, dspy.Prediction(answer=42.0000000001)) == 1.0
    assert numeric_match(ex, dspy.Prediction(answer=40.5)) == 0.0
    fb = numeric_match_with_feedback(ex, dspy.Prediction(answer=40.5))
    assert fb.score == 0.0 and fb.feedback == "expected 42, got 40.5"
    fb = numeric_match_with_feedback(ex, dspy.Prediction(answer="unsure"))
    assert fb.score == 0.0 and "could not find a number" in fb.feedback
    assert numeric_match_with_feedback(ex, dspy.Prediction(answer="42")).score == 1.0
    small = dspy.Example(question="q", answer=0.0)
    assert numeric_match(small, dspy.Prediction(answer=5e-7)) == 1.0
    assert numeric_match(small, dspy.Prediction(answer=1e-3)) == 0.0


# ----------------------------------------------------------------------------- data loaders


def test_jsonl_loader(tmp_path):
    p = tmp_path / "m.jsonl"
    rows = [{"question": "1+1?", "answer": "One plus one is 2.\n#### 2"},
            {"question": "Cost?", "answer": "#### 1,250"},
            {"question": "Half?", "answer": 0.5}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    exs = load_math_jsonl(p)
    assert [e.answer for e in exs] == [2.0, 1250.0, 0.5]
    assert exs[0].rationale == "One plus one is 2." and set(exs[0].inputs().keys()) == {"question"}
    assert load_gsm8k("test", path=str(p))[1].answer == 1250.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(ValueError, match="question"):
        load_math_jsonl(bad)


@pytest.mark.parametrize("loader", [load_gsm8k, load_multiarith])
def test_hub_loaders_fail_fast_offline(loader, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="local JSONL"):
        loader("test")
    assert time.monotonic() - t < 5


# ----------------------------------------------------------------------------- HumanEval


def test_humaneval_splits():
    s = load_humaneval()
    assert [len(s[k]) for k in ("train", "val", "test")] == [40, 40, 84]
    ids = [e.task_id for k in ("train", "val", "test") for e in s[k]]
    assert len(set(ids)) == 164
    assert [e.task_id for e in load_humaneval()["test"]] == [e.task_id for e in s["test"]]
    assert [e.task_id for e in load_humaneval(seed=1)["test"]] != [e.task_id for e in s["test"]]
    assert set(s["train"][0].inputs().keys()) == {"prompt"}
    assert len(load_humaneval(n_train=10, n_val=5, n_test=20)["test"]) == 20
    with pytest.raises(ValueError, match="164"):
        load_humaneval(n_train=100, n_val=100)


def test_extract_code_and_build_program():
    text = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nThanks"
    assert extract_code(text, "f") == "def f(x):\n    return x + 1"
    prompt = 'def f(x):\n    """Add one."""\n'
    body_only = build_program(prompt, "return x + 1", "f")
    ns: dict = {}
    exec(body_only, ns)
    assert ns["f"](1) == 2
    assert "def f(x):\n    return x + 1" in build_program(prompt, text, "f")


def test_humaneval_metric_canonical_and_wrong():
    exs = load_humaneval()["train"][:3]
    for ex in exs:
        assert humaneval_metric(ex, dspy.Prediction(code=ex.canonical_solution)) == 1.0
    ex = exs[0]
    fenced = f"```python\n{ex.prompt}{ex.canonical_solution}\n```"
    assert humaneval_metric(ex, dspy.Prediction(code=fenced)) == 1.0
    assert humaneval_metric(ex, dspy.Prediction(code="    return None")) == 0.0
    fb = humaneval_metric_with_feedback(ex, dspy.Prediction(code="    return None"))
    assert fb.score == 0.0 and ("assert" in fb.feedback or "Error" in fb.feedback)
    spin = dspy.Prediction(code="    while True:\n        pass")
    loop = humaneval_metric_with_feedback(ex, spin, timeout_s=1)
    assert loop.score == 0.0 and "timed out" in loop.feedback


# ----------------------------------------------------------------------------- programs + registry


def test_program_construction():
    assert [n for n, _ in MathSolver().named_predictors()] == ["solve.predict"]
    assert [n for n, _ in PlanThenSolve().named_predictors()] == ["plan", "solve"]
    sig = MathSolver().solve.predict.signature
    assert sig.instructions.startswith("Solve the math word problem")
    assert list(sig.output_fields) == ["reasoning", "answer"]


def test_task_registry():
    assert set(TASKS) == {"math", "math-basic", "gsm8k", "multiarith", "humaneval", "math-plan", "simulated"}
    t = get_task("math")
    s = t.load_splits(seed=0, sizes={"train": 5, "val": 3, "test": 4})
    assert [len(s[k]) for k in ("train", "val", "test")] == [5, 3, 4]
    assert t.metric(s["train"][0], dspy.Prediction(answer=s["train"][0].answer)) == 1.0
    assert isinstance(get_task("math-plan").make_program(), PlanThenSolve)
    assert isinstance(get_task("gsm8k").make_program(), MathSolver)
    assert get_task("humaneval").make_program().named_predictors()[0][0] == "generate"
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown split"):
        t.load_splits(sizes={"dev": 3})


def test_registry_with_local_jsonl(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(10)))
    s = get_task("gsm8k").load_splits(sizes={"train": 4, "val": 2, "test": 4}, path=str(p))
    assert sorted(e.answer for k in s for e in s[k]) == [float(i) for i in range(10)]


def test_basic_kinds_are_exact_and_registered():
    import re

    from cd_dspy.programs import get_task
    from cd_dspy.programs.math_word import BASIC_KINDS, generate_problems

    problems = generate_problems(60, seed=3, kinds=BASIC_KINDS)
    assert {p.kind for p in problems} == set(BASIC_KINDS)
    for p in problems:
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", p.question)]
        if p.kind == "difference":
            assert p.answer == numbers[1] - numbers[0]
        if p.kind == "minutes_total":
            assert p.answer == 60 * numbers[0] + numbers[1]
        if p.kind == "sale_price":
            assert abs(p.answer - numbers[0] * (100 - numbers[1]) / 100) < 1e-9
    splits = get_task("math-basic").load_splits(sizes={"train": 5, "val": 5, "test": 5})
    assert all(e.kind in BASIC_KINDS for split in splits.values() for e in split)
