"""Small-sample statistics for decisions and reports: paired tests and 95% intervals (scipy).

Scores are per-example values in [0, 1] (the metric's); reported figures are on the 0-100 scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


def sign_test(better: Sequence[float], worse: Sequence[float], alternative: str = "greater") -> float:
    """Exact sign test (McNemar's exact test for 0/1 scores) on paired scores; ties are dropped.

    `alternative="greater"` tests whether `better` wins more often than it loses."""
    wins = sum(b > w for b, w in zip(better, worse, strict=True))
    losses = sum(b < w for b, w in zip(better, worse, strict=True))
    if wins + losses == 0:
        return 1.0
    return float(stats.binomtest(wins, wins + losses, 0.5, alternative=alternative).pvalue)


def score_interval(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A confidence interval (0-100) for the mean score: Wilson for 0/1 scores, else Student's t."""
    n = len(scores)
    if n == 0:
        return (math.nan, math.nan)
    if all(s in (0.0, 1.0) for s in scores):
        ci = stats.binomtest(int(sum(scores)), n).proportion_ci(confidence_level=confidence, method="wilson")
        return (100.0 * ci.low, 100.0 * ci.high)
    return _t_interval(list(scores), confidence)


def score_summary(scores: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """{"score", "low", "high"} (0-100) and "n": the mean score with its interval (`score_interval`)."""
    low, high = score_interval(scores, confidence)
    return {"score": _mean(scores), "low": float(low), "high": float(high), "n": len(scores)}


def paired_difference(after: Sequence[float], before: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Mean difference after - before (points), its interval (t on the paired differences) and sign tests."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    low, high = _t_interval(diffs, confidence) if diffs else (math.nan, math.nan)
    return Comparison(n=len(diffs), before=_mean(before), after=_mean(after), difference=_mean(diffs),
                      low=low, high=high, wins=sum(d > 0 for d in diffs), losses=sum(d < 0 for d in diffs),
                      p_greater=sign_test(after, before), p_two_sided=sign_test(after, before, "two-sided"))


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two programs on the same examples (scores on the 0-100 scale)."""

    n: int
    before: float
    after: float
    difference: float
    low: float
    high: float
    wins: int
    losses: int
    p_greater: float
    p_two_sided: float

    def describe(self) -> str:
        return (f"{self.before:.1f} -> {self.after:.1f} (difference {self.difference:+.1f}, 95% CI "
                f"[{self.low:+.1f}, {self.high:+.1f}]; {self.wins} fixed, {self.losses} broken; "
                f"sign test p = {self.p_two_sided:.3g} two-sided) on {self.n} examples")

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(self).items()}


def comparison_cell(c: dict) -> str:
    """A `Comparison.to_dict()` in one table cell: difference [95% CI], fixed/broken, two-sided sign test p
    (and its Holm-adjusted value when the table makes several comparisons, see `holm_adjusted`)."""
    holm = f" (Holm {c['p_holm']:.3g})" if "p_holm" in c else ""
    return (f"{c['difference']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}], {c['wins']}/{c['losses']}, "
            f"p = {c['p_two_sided']:.3g}{holm}")


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: family-wise error control when one table
    compares several methods with the same baseline (reject those with adjusted p < alpha)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def min_wins_for_significance(alpha: float, comparisons: int = 1) -> int:
    """The fewest wins, with no loss, that a one-sided sign test at `alpha / comparisons` accepts."""
    return math.floor(math.log2(comparisons / alpha)) + 1  # the smallest w with 0.5**w < alpha / comparisons


def min_detectable_gain(n: int, alpha: float, comparisons: int = 1) -> float:
    """The smallest gain (points) that can be told from noise on `n` paired examples: every example the
    change touches must improve, and that takes `min_wins_for_significance` examples."""
    return math.inf if n <= 0 else 100.0 * min_wins_for_significance(alpha, comparisons) / n


def _mean(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else math.nan


def _t_interval(values: list[float], confidence: float) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return (100.0 * mean, 100.0 * mean) if n else (math.nan, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return (100.0 * (mean - half), 100.0 * (mean + half))


@dataclass(frozen=True)
class Ratio:
    """A ratio of two paired means with its Fieller interval (fractions, not points).

    `estimate` is None when the denominator's mean is 0; `low`/`high` are -inf/+inf when the interval is
    unbounded (the denominator cannot be told from 0 at this confidence)."""

    estimate: float | None
    low: float
    high: float

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def describe(self, percent: bool = True) -> str:
        scale, unit = (100.0, "%") if percent else (1.0, "")
        if self.estimate is None:
            return "undefined (the denominator is 0)"
        interval = (f"[95% CI {scale * self.low:.0f}{unit}, {scale * self.high:.0f}{unit}]" if self.bounded
                    else "[95% CI unbounded: the denominator cannot be told from 0]")
        return f"{scale * self.estimate:.0f}{unit} {interval}"

    def to_dict(self) -> dict:
        finite = self.bounded
        return {"estimate": self.estimate, "low": self.low if finite else None, "high": self.high if finite else None}


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95) -> Ratio:
    """mean(numerator) / mean(denominator) over paired per-example values, with Fieller's interval.

    Fieller's interval is the set of ratios r for which mean(numerator - r * denominator) cannot be told
    from 0 by a one-sample t test on the paired values (n - 1 degrees of freedom): the roots of
    (x̄ - r ȳ)² = t² (s_xx - 2 r s_xy + r² s_yy) / n. When ȳ² ≤ t² s_yy / n the set is unbounded and
    (-inf, inf) is returned. For the share of a gap closed, numerator = after - before and
    denominator = source - before per example; for the share of quality kept, after and source."""
    x, y = [float(v) for v in numerator], [float(v) for v in denominator]
    n = len(x)
    if n != len(y):
        raise ValueError(f"numerator and denominator must be paired values of the same length, got {n} and {len(y)}.")
    if n == 0:
        return Ratio(None, -math.inf, math.inf)
    mx, my = sum(x) / n, sum(y) / n
    estimate = mx / my if my != 0 else None
    if n < 2 or estimate is None:
        return Ratio(estimate, -math.inf, math.inf)
    sxx = sum((v - mx) ** 2 for v in x) / (n - 1)
    syy = sum((v - my) ** 2 for v in y) / (n - 1)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (n - 1)
    t2 = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) ** 2 / n
    a, b, c = my * my - t2 * syy, mx * my - t2 * sxy, mx * mx - t2 * sxx
    if a <= 0:
        return Ratio(estimate, -math.inf, math.inf)
    root = math.sqrt(max(0.0, b * b - a * c))  # >= 0: the estimate itself always lies in the set
    return Ratio(estimate, (b - root) / a, (b + root) / a)


def break_even(compile_cost: float, source_per_call: float, target_per_call: float) -> int | None:
    """The number of production calls after which the migration pays for itself:
    ceil(compile_cost / (source_per_call - target_per_call)); None when the target is not cheaper per call."""
    if compile_cost < 0 or source_per_call < 0 or target_per_call < 0:
        raise ValueError("costs must be non-negative numbers (dollars, tokens or seconds).")
    saving = source_per_call - target_per_call
    if saving <= 0:
        return None
    return math.ceil(round(compile_cost / saving, 9))  # 10 / 0.008 is 1250.0000000000002 in floating point
