"""The lever sections of a migration report (`cd_dspy.migration.report` places them): the lever table with the
quality-against-cost plot, the flips from the target as is to each lever, and each lever's provenance."""

from __future__ import annotations

import json
from typing import Any

from cd_dspy.core.stats import comparison_cell
from cd_dspy.migration.lever_table import money, p_of
from cd_dspy.migration.report_blocks import Bullets, Details, Figure, Heading, Para, Table

FLIP_GROUPS = ("fixed", "broken", "still wrong")
STATUSES = ("fixed", "broken", "still wrong", "still right")


def shows_levers(report: Any) -> bool:
    """Whether the report compares levers (anything but CD alone, which the classic sections cover)."""
    names = [row["name"] for row in report.levers]
    return bool(names) and names != ["target", "cd"]


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ratio(r: dict[str, Any] | None) -> str:
    if not r or r["estimate"] is None:
        return "undefined"
    bounds = f"[{100 * r['low']:.0f}%, {100 * r['high']:.0f}%]" if r["low"] is not None else "[unbounded]"
    return f"{100 * r['estimate']:.0f}% {bounds}"


def _tokens(per: dict[str, Any]) -> str:
    """Prompt / output tokens per request; prompt tokens counted on cached requests too (their output is not)."""
    if per["prompt_tokens"] is None:
        return "not measured"
    if not per["measured"]:
        return f"{per['prompt_tokens']:,.0f} (counted) / not measured"
    return f"{per['prompt_tokens']:,.0f} / {per['completion_tokens']:,.0f}"


def _once(row: dict[str, Any], unit: str) -> str:
    once = row["one_time"]
    if row["name"] == "target":
        return "none"
    training = f", {once['train_seconds']:.3g} s training" if once["train_seconds"] else ""
    return f"{once['calls']:,} calls{training}, {money(once['total'], unit)}"


def levers_section(report: Any, figures: set[str]) -> list[Any]:
    unit, choice = report.costs["unit"], report.choice
    source = next((r for r in report.levers if "vs_source" in r), None)
    header = ["lever", "test score [95% CI]", "vs source: difference [95% CI], better/worse, McNemar exact p (Holm)",
              "vs target as is: the same", "source quality kept [95% CI]", "gap closed [95% CI]",
              "prompt / output tokens per request", f"{'$' if unit == 'usd' else 'LM seconds'} per request",
              "one-time: calls, training, cost", "break-even (requests)"]
    runs = report.costs["runs"]
    rows = [["source", f"{report.scores['source']['score']:.1f} [{report.scores['source']['low']:.1f}, "
             f"{report.scores['source']['high']:.1f}]", "", "", "100%", "",
             _tokens({"measured": runs["source"]["measured"], "prompt_tokens": runs["source"][
                 "prompt_tokens_per_request"], "completion_tokens": runs["source"]["completion_tokens_per_request"]}),
             money(report.costs["per_request"].get("source"), unit), "", ""]]
    missing = []
    for r in report.levers:
        if "score" not in r:
            missing.append(f"{r['label']}: {r['status']}" + (f" — {r['reason']}" if r["reason"] else ""))
            continue
        s, chosen = r["score"], " (chosen)" if r["name"] == choice.get("chosen") else ""
        rows.append([r["label"] + chosen, f"{s['score']:.1f} [{s['low']:.1f}, {s['high']:.1f}]",
                     comparison_cell(r["vs_source"]), comparison_cell(r["vs_target"]) if "vs_target" in r else "",
                     _ratio(r["quality_kept"]), _ratio(r.get("gap_closed")) if "gap_closed" in r else "0% (baseline)",
                     _tokens(r["per_request"]), money(r["per_request"]["cost"], unit), _once(r, unit),
                     "n/a" if r["break_even"] is None else f"{r['break_even']:,}"])
    out: list[Any] = [Heading("Levers", "levers"),
                      Para("Each lever scored on the same held-out test examples as the source and the target as is. "
                           "McNemar's exact test (the exact sign test on paired examples) against the source and "
                           "against the target as is, with Holm's adjustment over the levers; shares are ratios of "
                           "paired means with Fieller's 95% interval; cost per request is measured on the test "
                           "requests (prompt tokens counted on the requests themselves, demonstrations and rules "
                           "included); break-even = one-time cost / (source cost - lever cost) per request."),
                      Table(header, rows)]
    if "levers" in figures:
        out.append(Figure("levers", "Source quality kept against cost per request, one point per lever with its 95% "
                                    "interval (Fieller); the source at 100%."))
    if missing:
        out.append(Bullets(missing))
    if source is not None and choice:
        better = ", ".join(choice.get("better", [])) or "none"
        out.append(Para(f"Better than the target as is (Holm-adjusted p < 0.05): {better}; keeping the most quality: "
                        f"{', '.join(choice.get('contenders', [])) or 'none'}; chosen (most quality per unit of "
                        f"cost): {choice.get('chosen') or 'none'}."))
    return out


def lever_flips(report: Any, labels: dict[str, str]) -> list[Any]:
    """Flips from the target as is to each scored lever: counts, then each group's examples."""
    runs = [r["run"] for r in report.levers if "vs_target" in r]
    out: list[Any] = [Heading("Flips: target as is → each lever", "flips"),
                      Table(["lever", *STATUSES], [[labels[run], *(str(report.flip_counts(run)[k]) for k in STATUSES)]
                                                   for run in runs])]
    for run in runs:
        groups = []
        for group in FLIP_GROUPS:
            rows = [row for row in report.flips if row["statuses"].get(run) == group]
            table = Table(["#", "inputs", "gold", *(f"{labels[r]} (score: output)" for r in
                                                    ("target_before", run, "source"))],
                          [[str(row["index"]), _short(row["inputs"], 300), _short(row["gold"], 120),
                            *(f"{row['scores'][r]:g}: {_short(row['outputs'][r], 300)}" for r in
                              ("target_before", run, "source"))] for row in rows])
            groups.append(Details(f"{group} ({len(rows)})", [table] if rows else [Para("None.")]))
        out.append(Details(f"{labels[run]}: {report.flip_counts(run)['fixed']} fixed, "
                           f"{report.flip_counts(run)['broken']} broken", groups))
    return out


def provenance_section(report: Any) -> list[Any]:
    out: list[Any] = [Heading("Provenance per lever", "provenance")]
    for r in report.levers:
        out.append(Details(f"{r['label']} ({r['status']})", _provenance(r)))
    return out


def _provenance(r: dict[str, Any]) -> list[Any]:
    p = r.get("provenance") or {}
    if r["status"] != "finished":
        return [Para(r["reason"] or r["status"])]
    if r["name"] == "target":
        return [Para("The program as given, run on the target.")]
    if r["name"] == "cd":
        return [Para(f"{p.get('rules', 0)} rules selected: see Rules and their provenance. {p.get('message', '')}")]
    if r["name"] == "demos":
        return [Para(f"dspy.BootstrapFewShot with `{p.get('teacher')}` as teacher (max_bootstrapped_demos "
                     f"{p.get('max_bootstrapped_demos')}, max_labeled_demos {p.get('max_labeled_demos')}): the "
                     "teacher's traces the metric accepted, as demos in the prompt."), _demos_table(p)]
    if r["name"] == "sft":
        return [Para(f"dspy.BootstrapFinetune: `{p.get('teacher')}` wrote the traces the metric accepted; the "
                     f"target's weights were trained on them and serve as `{p.get('tuned_model')}`."),
                Bullets(_trainings(p.get("trainings", [])))]
    items = []
    for step in p.get("steps", []):
        extra = (f": {step['demos']} demos" if isinstance(step.get("demos"), int) else
                 f": {len(step['demos'])} demos" if isinstance(step.get("demos"), list) else "")
        trained = "; " + "; ".join(_trainings(step["trainings"])) if step.get("trainings") else ""
        items.append(f"{step['step']}{extra}{trained}")
    return [Para("BetterTogether's order, prompt → weights → prompt, with one teacher (the source) at every step; "
                 "its one-time cost includes the demos step."), Bullets(items)]


def _demos_table(p: dict[str, Any]) -> Table:
    return Table(["predictor", "training example", "demo"],
                 [[d["predictor"], "n/a" if d["train_index"] is None else str(d["train_index"]), _short(d["demo"], 400)]
                  for d in p.get("demos", [])])


def _trainings(trainings: list[dict[str, Any]]) -> list[str]:
    return [f"trained on {t['records']} records in {t['seconds']:.3g} s" + (f", files in `{t['output_dir']}`" if
                                                                             t.get("output_dir") else "")
            for t in trainings] or ["no training recorded"]


def lever_points(report: Any) -> list[dict[str, Any]]:
    """The plot's points: each scored lever's cost per request and quality kept with its interval."""
    return [{"label": r["label"], "cost": r["per_request"]["cost"], "kept": r["quality_kept"],
             "chosen": r["name"] == report.choice.get("chosen"), "significant": "vs_target" in r and
             p_of(r["vs_target"]) < 0.05}
            for r in report.levers if "score" in r and r["per_request"]["cost"] is not None]
