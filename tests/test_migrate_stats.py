"""The statistics and costs of a migration report on known inputs, with the values worked out by hand."""

from __future__ import annotations

import math

import pytest
from migrate_world import raises_naming
from scipy import stats as scipy_stats

from cd_dspy.core.heldout import ExampleRecord, RunSummary
from cd_dspy.core.result import RoleUsage
from cd_dspy.core.stats import (
    break_even,
    comparison_cell,
    holm_adjusted,
    paired_difference,
    ratio_interval,
    score_interval,
    score_summary,
)
from cd_dspy.migration.costs import PriceTableError, load_prices, migration_costs, price_of


def pairs(fixed: int, broken: int, same: int = 0) -> tuple[list[float], list[float]]:
    """(after, before) with `fixed` examples 0 -> 1, `broken` 1 -> 0 and `same` unchanged."""
    return [1.0] * fixed + [0.0] * broken + [1.0] * same, [0.0] * fixed + [1.0] * broken + [1.0] * same


@pytest.mark.parametrize("fixed, broken, two_sided, greater", [
    (8, 1, 20 / 512, 10 / 512),  # 2 * P(X <= 1 | 9, 1/2) = 2 * (1 + 9) / 2^9; P(X >= 8) = (9 + 1) / 2^9
    (6, 0, 2 / 64, 1 / 64),  # 2 * (1/2)^6
    (5, 5, 1.0, 0.623046875),  # symmetric: p = 1; P(X >= 5 | 10) = 638 / 1024
    (0, 0, 1.0, 1.0),  # no discordant pair: nothing to test
    (1, 7, 18 / 256, 255 / 256),  # 2 * (1 + 8) / 2^8; P(X >= 1 | 8) = 1 - 1/256
])
def test_mcnemar_exact_on_known_counts(fixed, broken, two_sided, greater):
    after, before = pairs(fixed, broken, same=3)
    c = paired_difference(after, before)
    assert (c.wins, c.losses) == (fixed, broken)
    assert c.p_two_sided == pytest.approx(two_sided, abs=1e-12)
    assert c.p_greater == pytest.approx(greater, abs=1e-12)


def test_holm_adjustment_on_known_values():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04); returned in input order
    assert holm_adjusted([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm_adjusted([0.047, 0.405]) == pytest.approx([0.094, 0.405])
    assert holm_adjusted([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, never below the raw p
    assert holm_adjusted([]) == []


def test_a_table_with_several_comparisons_shows_holms_p_beside_the_raw_one():
    from cd_dspy.distill.pipeline import add_holm  # the last step of held_out_rows

    base = [0.0] * 20
    rows = {"none": {"n": 20}, "a": {"vs_baseline": paired_difference([1.0] * 6 + [0.0] * 14, base).to_dict()},
            "b": {"vs_baseline": paired_difference([1.0] * 2 + [0.0] * 18, base).to_dict()}}
    add_holm(rows)
    a, b = rows["a"]["vs_baseline"], rows["b"]["vs_baseline"]
    assert a["p_holm"] == pytest.approx(2 * a["p_two_sided"]) and b["p_holm"] == pytest.approx(b["p_two_sided"])
    assert "(Holm 0.0625)" in comparison_cell(a) and "p = 0.0312" in comparison_cell(a)
    single = {"none": {"n": 20}, "a": {"vs_baseline": paired_difference([1.0] * 6 + [0.0] * 14, base).to_dict()}}
    add_holm(single)
    assert "p_holm" not in single["a"]["vs_baseline"] and "Holm" not in comparison_cell(single["a"]["vs_baseline"])


def test_wilson_interval_on_known_counts():
    # 8 of 10: centre (8 + z²/2) / (10 + z²), half z √(10·0.8·0.2 + z²/4) / (10 + z²), z = 1.95996
    z = 1.959963984540054
    centre, half = (8 + z * z / 2) / (10 + z * z), z * math.sqrt(1.6 + z * z / 4) / (10 + z * z)
    low, high = score_interval([1.0] * 8 + [0.0] * 2)
    assert (low, high) == pytest.approx((100 * (centre - half), 100 * (centre + half)), abs=1e-9)
    assert (low, high) == pytest.approx((49.016, 94.332), abs=1e-3)
    summary = score_summary([1.0] * 8 + [0.0] * 2)
    assert summary["score"] == 80.0 and summary["n"] == 10 and summary["low"] == pytest.approx(low)


def test_paired_difference_interval_on_known_values():
    # differences 1 (x6), 0 (x4): mean 0.6, sd √(2.4/9), t(0.975, 9) = 2.262157 -> 60 ± 36.94 points
    c = paired_difference([1.0] * 6 + [0.0] * 4, [0.0] * 10)
    assert c.difference == pytest.approx(60.0)
    assert (c.low, c.high) == pytest.approx((23.0591, 96.9409), abs=1e-3)


def test_fieller_reduces_to_the_t_interval_when_the_denominator_is_constant():
    # gap closed with before = 0 and source = 1 everywhere: (after - before) / (source - before) = mean(after)
    after = [1.0] * 6 + [0.0] * 4
    ratio = ratio_interval(after, [1.0] * 10)
    assert ratio.estimate == pytest.approx(0.6)
    assert (ratio.low, ratio.high) == pytest.approx((0.230591, 0.969409), abs=1e-6)  # 0.6 ± 2.262157 · 0.163299


def test_fieller_for_a_proportional_numerator_is_a_point_or_the_whole_line():
    # x = y / 2 makes |t| of (x - r y) = ȳ √n / s_y for every r ≠ 1/2: 4.0 > t(0.975, 4) = 2.776 -> {0.5}
    y = [1.0, 1.0, 1.0, 1.0, 0.0]
    ratio = ratio_interval([v / 2 for v in y], y)
    assert (ratio.estimate, ratio.low, ratio.high) == pytest.approx((0.5, 0.5, 0.5))
    # with y = [1, 1, 1, 0]: ȳ √n / s_y = 0.75 · 2 / 0.5 = 3.0 < t(0.975, 3) = 3.182 -> unbounded
    y = [1.0, 1.0, 1.0, 0.0]
    ratio = ratio_interval([v / 2 for v in y], y)
    assert ratio.estimate == pytest.approx(0.5) and not ratio.bounded
    assert ratio.to_dict() == {"estimate": pytest.approx(0.5), "low": None, "high": None}


def test_fieller_bounds_are_where_the_t_test_of_the_paired_contrast_is_just_significant():
    source = [1.0] * 18 + [0.0] * 2
    before = [1.0] * 5 + [0.0] * 15
    after = [1.0] * 12 + [0.0] * 8
    x = [a - b for a, b in zip(after, before, strict=True)]
    y = [s - b for s, b in zip(source, before, strict=True)]
    ratio = ratio_interval(x, y)
    assert ratio.estimate == pytest.approx(7 / 13)  # (12 - 5) / (18 - 5)
    critical = scipy_stats.t.ppf(0.975, len(x) - 1)
    for bound in (ratio.low, ratio.high):
        z = [a - bound * b for a, b in zip(x, y, strict=True)]
        mean, sd = sum(z) / len(z), math.sqrt(sum((v - sum(z) / len(z)) ** 2 for v in z) / (len(z) - 1))
        assert abs(mean) / (sd / math.sqrt(len(z))) == pytest.approx(critical, rel=1e-9)
    assert ratio.low < ratio.estimate < ratio.high


def test_ratio_with_a_zero_denominator_is_undefined():
    assert ratio_interval([1.0, 0.0], [0.0, 0.0]).estimate is None
    assert ratio_interval([], []).estimate is None
    with pytest.raises(ValueError, match="same length"):
        ratio_interval([1.0], [1.0, 0.0])


@pytest.mark.parametrize("compile_cost, source, target, expected", [
    (10.0, 0.01, 0.002, 1250),  # 10 / 0.008 exactly (not 1251 from floating point)
    (1.0, 0.3, 0.0, 4),  # 3.33 -> the 4th call pays
    (0.0, 1.0, 0.5, 0),
    (10.0, 0.002, 0.01, None),  # the target costs more per call: never
    (10.0, 0.01, 0.01, None),
])
def test_break_even_on_known_inputs(compile_cost, source, target, expected):
    assert break_even(compile_cost, source, target) == expected


def test_break_even_rejects_negative_costs():
    with pytest.raises(ValueError, match="non-negative"):
        break_even(-1.0, 1.0, 0.5)


def summary(n: int, prompt_tokens: int, call_seconds: float) -> RunSummary:
    records = [ExampleRecord(index=i, score=1.0, outputs={}, calls=1, prompt_tokens=prompt_tokens // n,
                             seconds=call_seconds, call_seconds=[call_seconds]) for i in range(n)]
    return RunSummary.of(records)


def test_migration_costs_in_dollars_on_known_inputs():
    table = {"provider/big": (1.0, 0.0), "small": (0.5, 0.0)}  # $ per million input tokens; outputs free
    costs = migration_costs(
        models={"source": "provider/big", "target": "provider/small", "teacher": "provider/big"},
        runs={"source": summary(10, 10_000, 2.0), "target_before": summary(10, 2_000, 0.5),
              "target_after": summary(10, 2_000, 0.5)},
        compile_usage={"teacher": RoleUsage(calls=5, prompt_tokens=100_000),
                       "target": RoleUsage(calls=50, prompt_tokens=200_000)},
        compile_seconds={"teacher": 10.0, "target": 25.0}, table=table)
    assert costs["unit"] == "usd" and costs["missing_prices"] == []
    assert costs["per_request"]["source"] == pytest.approx(0.001)  # 1,000 tokens at $1/Mtok
    assert costs["per_request"]["target_after"] == pytest.approx(0.0001)  # 200 tokens at $0.5/Mtok
    assert costs["compile"]["total"] == pytest.approx(0.2)  # 0.1 (teacher) + 0.1 (target)
    assert costs["break_even"] == 223  # 0.2 / 0.0009 = 222.2
    assert costs["cost_ratio"] == pytest.approx(0.1)


def test_migration_costs_fall_back_to_seconds_without_prices():
    costs = migration_costs(
        models={"source": "local/big", "target": "local/small", "teacher": "local/big"},
        runs={"source": summary(4, 400, 2.0), "target_before": summary(4, 400, 0.5),
              "target_after": summary(4, 400, 0.5)},
        compile_usage={"teacher": RoleUsage(calls=2), "target": RoleUsage(calls=20)},
        compile_seconds={"teacher": 10.0, "target": 20.0}, table=None)
    assert costs["unit"] == "seconds" and costs["missing_prices"] == ["local/big", "local/small"]
    assert costs["per_request"]["source"] == pytest.approx(2.0)
    assert costs["break_even"] == 20  # 30 s of compile / 1.5 s saved per request
    assert costs["prices"]["source"] is None


def test_prices_come_from_the_table_first_then_litellm(tmp_path):
    assert price_of("openai/gpt-4o-mini").source == "litellm"
    assert (price_of("openai/gpt-4o-mini").input_per_mtok, price_of("openai/gpt-4o-mini").output_per_mtok) == \
        pytest.approx((0.15, 0.6))
    mine = price_of("openai/gpt-4o-mini", {"openai/gpt-4o-mini": (1.0, 2.0)})
    assert (mine.input_per_mtok, mine.source) == (1.0, "price table")
    assert price_of("local/qwen2.5-coder-0.5b") is None  # no price known: none is invented
    assert price_of("local/qwen2.5-coder-0.5b", {"qwen2.5-coder-0.5b": (0.0, 0.0)}).input_per_mtok == 0.0
    path = tmp_path / "prices.yaml"
    path.write_text("local/a: [0.1, 0.2]\nb: {input: 1, output: 3}\n")
    assert load_prices(path) == {"local/a": (0.1, 0.2), "b": (1.0, 3.0)}


@pytest.mark.parametrize("content, words", [
    ('{"m": [1]}', ["'m'", "[input $/Mtok, output $/Mtok]"]),
    ('{"m": [1, -2]}', ["non-negative"]),
    ('{"m": [1, 2]', ["not valid JSON"]),
    ("[1, 2]", ["must map model names"]),
])
def test_bad_price_tables_name_the_entry_and_the_fix(tmp_path, content, words):
    path = tmp_path / "prices.json"
    path.write_text(content)
    raises_naming(PriceTableError, lambda: load_prices(path), words)
    with pytest.raises(PriceTableError, match="does not exist"):
        load_prices(tmp_path / "none.json")


def test_cost_per_request_is_measured_on_requests_the_cache_did_not_answer():
    records = [ExampleRecord(index=0, score=1.0, outputs={}, calls=1, prompt_tokens=100, completion_tokens=10,
                             seconds=1.5, call_seconds=[1.0]),
               ExampleRecord(index=1, score=1.0, outputs={}, calls=1, prompt_tokens=300, completion_tokens=30,
                             seconds=3.5, call_seconds=[3.0]),
               ExampleRecord(index=2, score=1.0, outputs={}, cached_calls=1, seconds=0.01),  # DSPy's cache answered
               ExampleRecord(index=3, score=0.0, outputs={}, calls=1, prompt_tokens=999, failed="timeout",
                             call_seconds=[9.0])]
    run = RunSummary.of(records)
    assert (run.n, run.measured, run.failed, run.cached_calls) == (4, 2, 1, 1)
    assert (run.prompt_tokens_per_request, run.completion_tokens_per_request) == (200.0, 20.0)
    assert run.mean_lm_seconds == 2.0 and run.median_example_seconds == 2.5
    assert run.median_call_seconds == 3.0  # every call that reached the model: 1, 3 and 9 s
