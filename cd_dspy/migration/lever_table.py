"""The lever table of a migration: each lever's held-out score, its paired tests, shares and costs, the choice of
lever and the verdict's words (computed from per-example scores; `levers` builds the levers).

Per lever (`levers.LEVERS`): the test score with its interval; McNemar's exact test (the exact sign test)
against the source and against the target as is, each with Holm's adjustment over the levers compared; the share
of source quality kept, lever / source, and of the source→target gap closed, (lever - target) / (source - target),
as ratios of paired means with Fieller's interval; prompt and output tokens and cost per request (dollars where
every LM has a price, else seconds of LM time); the one-time cost (compile calls, training time) and break-even.

The choice: the levers better than the target as is (Holm-adjusted p < alpha, a positive difference); among them,
those keeping the most quality (the best-scoring one and every one not worse than it by the paired test); of
those, the one that keeps the most source quality per unit of cost per request (with equal quality, the cheapest).
None when no lever can be told from the target as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cd_dspy.core.result import RoleUsage
from cd_dspy.core.stats import (
    Comparison,
    break_even,
    comparison_cell,
    holm_adjusted,
    paired_difference,
    ratio_interval,
    score_summary,
)
from cd_dspy.migration.costs import USD, one_time_cost
from cd_dspy.migration.levers import FINISHED, LABELS, RUN_OF, Lever

ALPHA = 0.05


# -- words shared with the CD verdict (cd_dspy.migration.api) -----------------------------------------
def judgement(comparison: Comparison, other: str, alpha: float = ALPHA, short: bool = False) -> str:
    """'not distinguishable from X (...)', or better/worse than X when McNemar's exact test says so
    (`short`: only the reading and p)."""
    c = comparison
    reading = (f"not distinguishable from {other}" if c.p_two_sided >= alpha else
               f"{'better' if c.difference > 0 else 'worse'} than {other}")
    if short:
        return f"{reading}, McNemar exact p = {c.p_two_sided:.3g}"
    return (f"{reading} ({c.difference:+.1f} points [95% CI {c.low:+.1f}, {c.high:+.1f}], {c.wins} better / "
            f"{c.losses} worse, McNemar exact p = {c.p_two_sided:.3g})")


def ratio_text(ratio: dict[str, Any] | None) -> str:
    if not ratio or ratio["estimate"] is None:
        return "an undefined share (the denominator is 0)"
    interval = (f"[95% CI {100 * ratio['low']:.0f}%, {100 * ratio['high']:.0f}%]" if ratio["low"] is not None
                else "[95% CI unbounded]")
    return f"{100 * ratio['estimate']:.0f}% {interval}"


def money(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"${value:.3g}" if unit == USD else f"{value:.3g} s"


def p_of(comparison: dict[str, Any]) -> float:
    """The comparison's Holm-adjusted p when the table made several, else its raw two-sided p."""
    return comparison.get("p_holm", comparison["p_two_sided"])


# -- the rows ------------------------------------------------------------------------------------------
def lever_rows(levers: dict[str, Lever], scores: dict[str, list[float]], costs: dict[str, Any],
               table: dict[str, tuple[float, float]] | None, flips: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per lever, in `levers`' order; `scores` holds the per-example scores of the source and of each
    scored lever's run (`RUN_OF`), `costs` is `costs.migration_costs` over those runs, `flips` the flip rows."""
    source, base = scores["source"], scores["target_before"]
    rows = []
    for name, lever in levers.items():
        run = RUN_OF[name]
        row: dict[str, Any] = {"name": name, "label": LABELS[name], "run": run, "status": lever.status,
                               "reason": lever.reason, "provenance": lever.provenance, "builds_on": lever.builds_on}
        rows.append(row)
        if lever.status != FINISHED or run not in scores:
            continue
        mine = scores[run]
        row.update(score=score_summary(mine), vs_source=paired_difference(mine, source).to_dict(),
                   quality_kept=ratio_interval(mine, source).to_dict(), per_request=_per_request(costs, run),
                   one_time=_one_time(lever, costs, table))
        if name != "target":
            row.update(vs_target=paired_difference(mine, base).to_dict(),
                       gap_closed=ratio_interval([a - b for a, b in zip(mine, base, strict=True)],
                                                 [s - b for s, b in zip(source, base, strict=True)]).to_dict(),
                       flips=_flip_counts(flips, run))
        cost, source_cost = row["per_request"]["cost"], costs["per_request"].get("source")
        total = row["one_time"]["total"]
        row["break_even"] = (break_even(total, source_cost, cost) if cost is not None and source_cost is not None
                             and name != "target" else None)
        kept = row["quality_kept"]["estimate"]
        row["quality_per_cost"] = kept / cost if kept is not None and cost else None
    compared = [r for r in rows if r["name"] != "target" and "vs_target" in r]
    if len(compared) > 1:  # Holm over the levers, for each of the two families of tests
        for key in ("vs_source", "vs_target"):
            for r, p in zip(compared, holm_adjusted([r[key]["p_two_sided"] for r in compared]), strict=True):
                r[key]["p_holm"] = p
    return rows


def _per_request(costs: dict[str, Any], run: str) -> dict[str, Any]:
    r = costs["runs"][run]
    return {"prompt_tokens": r["prompt_tokens_per_request"], "completion_tokens": r["completion_tokens_per_request"],
            "lm_seconds": r["mean_lm_seconds"], "usd": r["usd_per_request"], "cost": costs["per_request"].get(run),
            "measured": r["measured"], "n": r["n"], "unit": costs["unit"]}


def _one_time(lever: Lever, costs: dict[str, Any], table: dict[str, tuple[float, float]] | None) -> dict[str, Any]:
    """The lever's one-time cost (the combined lever's includes its demos step: `levers.Lever.builds_on`)."""
    if lever.name == "cd":  # CD's compile is costed by migration_costs
        compile_ = costs["compile"]
        return {"roles": {r: compile_[r] for r in ("teacher", "target")}, "train_seconds": 0.0,
                "calls": sum(compile_[r]["calls"] for r in ("teacher", "target")),
                "tokens": sum(compile_[r]["prompt_tokens"] + compile_[r]["completion_tokens"]
                              for r in ("teacher", "target")), "total": compile_["total"], "unit": costs["unit"]}
    usage = {role: RoleUsage.from_dict(used) for role, used in lever.usage.items()}
    models = {role: used["model"] for role, used in lever.usage.items()}
    return one_time_cost(usage, lever.seconds, models, unit=costs["unit"], table=table,
                         train_seconds=lever.train_seconds)


def _flip_counts(flips: Sequence[dict[str, Any]], run: str) -> dict[str, int]:
    counts = dict.fromkeys(("fixed", "broken", "still wrong", "still right"), 0)
    for row in flips:
        counts[row["statuses"][run]] += 1
    return counts


# -- the choice and the verdict -----------------------------------------------------------------------
def choose(rows: Sequence[dict[str, Any]], scores: dict[str, list[float]], alpha: float = ALPHA) -> dict[str, Any]:
    """{"chosen": name or None, "better": levers better than the target as is, "contenders": those of them that
    keep the most quality} (module docstring)."""
    built = [r for r in rows if r["name"] != "target" and "vs_target" in r]
    better = [r for r in built if p_of(r["vs_target"]) < alpha and r["vs_target"]["difference"] > 0]
    if not better:
        return {"chosen": None, "better": [], "contenders": []}
    top = max(better, key=lambda r: r["score"]["score"])

    def as_good(r: dict[str, Any]) -> bool:
        c = paired_difference(scores[r["run"]], scores[top["run"]])
        return r is top or not (c.p_two_sided < alpha and c.difference < 0)

    contenders = [r for r in better if as_good(r)]
    chosen = max(contenders, key=lambda r: (r["quality_per_cost"] is not None, r["quality_per_cost"] or 0.0,
                                            r["score"]["score"], -(r["per_request"]["prompt_tokens"] or math.inf)))
    return {"chosen": chosen["name"], "better": [r["name"] for r in better],
            "contenders": [r["name"] for r in contenders], "best_score": top["name"]}


def lever_verdict(rows: Sequence[dict[str, Any]], choice: dict[str, Any], costs: dict[str, Any],
                  n: int) -> tuple[str, list[str]]:
    """The verdict (the chosen lever with its interval, tests, cost and break-even, or that none is
    distinguishable from the target as is) and one detail line per lever."""
    by_name = {r["name"]: r for r in rows}
    source = costs["per_request"].get("source")
    details = [_row_line(r, costs["unit"]) for r in rows]
    if choice["chosen"] is None:
        built = [r for r in rows if r["name"] != "target" and "vs_target" in r]
        base = by_name["target"]
        share = _share(base, source, costs)
        kept = (f"the target as is keeps {ratio_text(base['quality_kept'])} of source quality "
                f"({base['score']['score']:.1f} vs {_source_score(base):.1f} on {n} test examples)"
                + (f" {share}" if share else ""))
        if not built:
            skipped = "; ".join(f"{r['label']}: {r['status']}" for r in rows if r["name"] != "target") or "none asked"
            return f"No lever was built and scored ({skipped}); {kept}.", details
        tests = ", ".join(f"{r['label']} p = {p_of(r['vs_target']):.3g}" for r in built)
        holm = " with Holm's adjustment" if len(built) > 1 else ""
        return (f"No lever is distinguishable from the target as is on {n} test examples (McNemar exact{holm}: "
                f"{tests}); {kept}."), details
    r = by_name[choice["chosen"]]
    vs_s, vs_t = r["vs_source"], r["vs_target"]
    holm = "Holm-adjusted " if "p_holm" in vs_t else ""
    reading = ("not distinguishable from the source" if p_of(vs_s) >= ALPHA else
               f"{'better' if vs_s['difference'] > 0 else 'worse'} than the source")
    compared = sum("vs_target" in row for row in rows)
    lead = (f"Of the {compared} levers compared, {r['label']} keeps the most source quality per unit of cost: "
            if compared > 1 else f"{r['label']} keeps ")
    sc = r["score"]
    text = (f"{lead}{ratio_text(r['quality_kept'])} of source quality ({sc['score']:.1f} [95% CI {sc['low']:.1f}, "
            f"{sc['high']:.1f}] vs {_source_score(r):.1f} on {n} test examples; {reading}, {holm}McNemar exact p = "
            f"{p_of(vs_s):.3g}), better than the target as is by {vs_t['difference']:+.1f} points [95% CI "
            f"{vs_t['low']:+.1f}, {vs_t['high']:+.1f}] ({holm}p = {p_of(vs_t):.3g}), {_cost_phrase(r, source, costs)}")
    others = [by_name[c] for c in choice["contenders"] if c != r["name"]]
    for other in others:
        text += (f" {other['label']} keeps as much quality (by the paired test) at less quality per unit of cost "
                 f"({_costs_against(other, r, costs['unit'])}).")
    return text, details


def _costs_against(other: dict[str, Any], chosen: dict[str, Any], unit: str) -> str:
    """'X per request and Y once (break-even after N requests), against A and B (M)': a contender's costs beside the
    chosen lever's, so a reader sees what a choice between equals trades."""
    def costs(r: dict[str, Any]) -> str:
        once = "nothing" if r["name"] == "target" else money(r["one_time"]["total"], unit)
        after = "no break-even" if r["break_even"] is None else f"break-even after {r['break_even']:,} requests"
        return f"{money(r['per_request']['cost'], unit)} per request and {once} once ({after})"

    return f"{costs(other)}, against {costs(chosen)}"


def _source_score(row: dict[str, Any]) -> float:
    return row["vs_source"]["before"]


def _share(r: dict[str, Any], source: float | None, costs: dict[str, Any]) -> str | None:
    """'at X% of the source's cost per request (a vs b)' (with the unit's note), None when not measured."""
    unit, cost = costs["unit"], r["per_request"]["cost"]
    if cost is None or source is None:
        return None
    what = "cost" if unit == USD else "LM time"
    share = f"at {100 * cost / source:.0f}% of the source's {what} per request" if source else \
        f"the source's {what} per request is 0"
    note = (f" — no price known for {', '.join(costs['missing_prices'])}, so cost is compared in seconds of LM time "
            "per request" if unit != USD else "")
    return f"{share} ({money(cost, unit)} vs {money(source, unit)}){note}"


def _cost_phrase(r: dict[str, Any], source: float | None, costs: dict[str, Any]) -> str:
    unit, total, share = costs["unit"], r["one_time"]["total"], _share(r, source, costs)
    if share is None:
        return "its cost per request was not measured (every request was answered by DSPy's cache); break-even unknown."
    training = r["one_time"]["train_seconds"]
    once = f"one-time {money(total, unit)}" + (f" plus {training:.3g} s of training" if unit == USD and training
                                                else "")
    pays = (f"break-even after {r['break_even']:,} requests ({once})" if r["break_even"] is not None else
            f"it never breaks even: it is not cheaper per request than the source ({once})")
    return f"{share}; {pays}."


def _row_line(r: dict[str, Any], unit: str) -> str:
    if "score" not in r:
        return f"{r['label']}: {r['status']}" + (f" ({r['reason']})" if r["reason"] else "") + "."
    s, per, once = r["score"], r["per_request"], r["one_time"]
    tokens = (f"{per['prompt_tokens']:.0f} prompt + {per['completion_tokens']:.0f} output tokens and "
              f"{money(per['cost'], unit)} per request" if per["measured"] else "cost per request not measured")
    line = f"{r['label']}: {s['score']:.1f} [95% CI {s['low']:.1f}, {s['high']:.1f}], keeps " \
           f"{ratio_text(r['quality_kept'])} of source quality"
    if r["name"] == "target":
        return f"{line}; {tokens}."
    training = f", {once['train_seconds']:.3g} s of training" if once["train_seconds"] else ""
    be = f"break-even after {r['break_even']:,} requests" if r["break_even"] is not None else "no break-even"
    return (f"{line}, closes {ratio_text(r['gap_closed'])} of the gap; vs the source "
            f"{comparison_cell(r['vs_source'])}; vs the target as is {comparison_cell(r['vs_target'])}; {tokens}; "
            f"one-time {once['calls']} calls{training}, {money(once['total'], unit)}; {be}.")
