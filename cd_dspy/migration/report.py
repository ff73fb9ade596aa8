"""A migration report as one list of blocks, rendered twice: a self-contained HTML page (inline SVG plots,
collapsible <details>, no script, nothing fetched from the network) and the same content as Markdown
(plots as PNG files next to it). When the migration compared levers (`levers`), the lever table with its
quality-against-cost plot, the flips to each lever and each lever's provenance come from `lever_report`."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.stats import Comparison
from cd_dspy.migration import lever_report, plots
from cd_dspy.migration.lever_table import judgement
from cd_dspy.migration.record import LABELS, RUNS, MigrationReport
from cd_dspy.migration.report_blocks import (
    STYLE,
    Bullets,
    Details,
    Figure,
    Heading,
    Para,
    Table,
    to_html_body,
    to_markdown,
)

FLIP_GROUPS = ("fixed", "broken", "still wrong")
CELL = 400  # characters of a value shown in a table cell
NO_CD = "CD was not among the levers compared (or its compile failed: see the lever table)."


# -- content -------------------------------------------------------------------------------------
def _short(value: Any, limit: int = CELL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score(s: dict[str, float]) -> str:
    return f"{s['score']:.1f} [{s['low']:.1f}, {s['high']:.1f}]"


def _num(value: Any, digits: int = 2, prefix: str = "") -> str:
    return "n/a" if value is None else f"{prefix}{value:,.{digits}f}"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def blocks(report: MigrationReport, figures: set[str]) -> list[Any]:
    """Everything the report says, in order (both renderers walk this list)."""
    m = report.models
    out: list[Any] = [Heading(f"Migration report: {m['source']} → {m['target']}", "top", 1),
                      Para(f"Source `{m['source']}`, target `{m['target']}`, teacher `{m['teacher']}`; "
                           f"{report.n_test} held-out test examples that neither the compile nor the selection "
                           f"touched (one example = {100 / max(1, report.n_test):.1f} points). Run directory "
                           f"`{report.run_dir}`."),
                      Heading("Verdict", "verdict"), Para(report.verdict, strong=True), Bullets(report.details)]
    levers = lever_report.shows_levers(report)
    out += lever_report.levers_section(report, figures) if levers else []
    out += _scores(report, figures)
    out += lever_report.lever_flips(report, LABELS) if levers else _flips(report)
    out += _costs(report) + (lever_report.provenance_section(report) if levers else [])
    out += _rules(report, figures) + _search(report, figures) + _compile(report)
    return out


def _has_cd(report: MigrationReport) -> bool:
    return "target_after" in report.scores and bool(report.after_vs_before)


def _scores(report: MigrationReport, figures: set[str]) -> list[Any]:
    lm = {r["run"]: (r.get("provenance") or {}).get("tuned_model") or report.models["target"] for r in report.levers}
    lm["source"] = report.models["source"]
    rows = [[LABELS.get(r, r), f"`{lm.get(r, report.models['target'])}`", _score(s), str(report.n_test)]
            for r, s in report.scores.items()]
    out = [Heading("Scores", "scores"), Table(["program", "LM", "test score [95% CI]", "examples"], rows)]
    if "scores" in figures:
        out.append(Figure("scores", "Test scores with 95% intervals (Wilson for 0/1 scores)."))
    if not _has_cd(report):
        return out + [Heading("Paired tests", "tests"), Para("Each lever's paired tests against the source and the "
                                                              "target as is are in the lever table.")]
    tests = []
    for name, other, data in (("target after CD vs target before CD", "the target before CD", report.after_vs_before),
                              ("target after CD vs source", "the source", report.after_vs_source)):
        c = Comparison(**{k: (float("nan") if v is None else v) for k, v in data.items()})
        tests.append([name, f"{c.difference:+.1f} [{c.low:+.1f}, {c.high:+.1f}]", f"{c.wins} / {c.losses}",
                      f"{c.p_two_sided:.3g}", judgement(c, other).split(" (")[0]])
    gap, kept = report.gap_closed, report.quality_kept
    out += [Heading("Paired tests: CD" if lever_report.shows_levers(report) else "Paired tests", "tests"),
            Table(["comparison", "difference, points [95% CI]", "better / worse", "McNemar exact p", "reading"],
                  tests),
            Para(f"Share of the source→target gap closed: {_ratio(gap)}; share of source quality kept: "
                 f"{_ratio(kept)} (ratios of paired means, Fieller's 95% interval; unbounded when the "
                 "denominator cannot be told from 0).")]
    return out


def _ratio(r: dict[str, Any]) -> str:
    if r["estimate"] is None:
        return "undefined"
    bounds = f"[{100 * r['low']:.0f}%, {100 * r['high']:.0f}%]" if r["low"] is not None else "[unbounded]"
    return f"{100 * r['estimate']:.0f}% {bounds}"


def _flips(report: MigrationReport) -> list[Any]:
    counts = report.flip_counts()
    out: list[Any] = [Heading("Flips: target before → after CD", "flips"),
                      Table(["fixed", "broken", "still wrong", "still right"],
                            [[str(counts[k]) for k in ("fixed", "broken", "still wrong", "still right")]])]
    for group in FLIP_GROUPS:
        rows = [r for r in report.flips if r["status"] == group]
        table = Table(["#", "inputs", "gold", *(f"{LABELS[r]} (score: output)" for r in RUNS)], [
            [str(row["index"]), _short(row["inputs"], 300), _short(row["gold"], 120),
             *(f"{row['scores'][r]:g}: {_short(row['outputs'][r], 300)}" for r in RUNS)] for row in rows])
        out.append(Details(f"{group} ({len(rows)})", [table] if rows else [Para("None.")]))
    return out


def _costs(report: MigrationReport) -> list[Any]:
    c = report.costs
    usd = c["unit"] == "usd"
    rows = []
    for run, row in c["runs"].items():
        n = max(1, row["n"])
        rows.append([LABELS[run], f"{(row['calls'] + row['cached_calls']) / n:.2f}", str(row["cached_calls"]),
                     f"{row['measured']} of {row['n']}", _num(row["tokens_per_request"], 0),
                     _num(row["usd_per_request"], 6, "$"),
                     _secs(row["mean_lm_seconds"]), _secs(row["median_example_seconds"]),
                     _secs(row["median_call_seconds"]), str(row["failed"])])
    compile_rows = [[role, str(r["calls"]), str(r["cached_calls"]), f"{r['prompt_tokens'] + r['completion_tokens']:,}",
                     _num(r["usd"], 4, "$"), _num(r["seconds"], 1)] for role, r in c["compile"].items()
                    if role != "total"]
    prices = [[role, f"`{report.models[role]}`"] + ([f"{p['input_per_mtok']:g}", f"{p['output_per_mtok']:g}",
                                                      p["source"]] if p else ["", "", "no price known"])
              for role, p in c["prices"].items()]
    unit = "dollars" if usd else "seconds of LM time (no price known for " + ", ".join(c["missing_prices"]) + ")"
    total = _num(c["compile"]["total"], 4, "$") if usd else f"{c['compile']['total']:,.1f} s"
    be = c["break_even"]
    pays = (f"{be:,} requests" if be is not None else "never (the target after CD is not cheaper per request)"
            if c["measured"] else "unknown (not measured: every request of a run was answered by DSPy's cache)")
    of_cd = " of CD" if lever_report.shows_levers(report) else ""
    once = (f"One-off compile cost{of_cd}: {total}. Break-even: {pays}." if _has_cd(report) else
            "Each lever's one-time cost and break-even are in the lever table.")
    return [Heading("Cost and latency", "costs"),
            Para(f"Costs are compared in {unit}. A request is one run of the program on one example; cost and "
                 "latency per request are measured on the requests whose every LM call reached the model (a request "
                 "DSPy's cache answered took no time and no tokens)."),
            Table(["program", "LM calls / request", "cached calls", "measured requests", "tokens / request",
                   "$ / request",
                   "LM seconds / request", "median request latency (s)", "median call latency (s)", "failed"], rows),
            Table(["compile role", "calls", "cached calls", "tokens", "$", "LM seconds"], compile_rows),
            Table(["role", "model", "input $/Mtok", "output $/Mtok", "price from"], prices),
            Para(once)]


def _rules(report: MigrationReport, figures: set[str]) -> list[Any]:
    out: list[Any] = [Heading("Rules and their provenance", "rules"),
                      Para("Each rule's chain: the target's mistakes it came from → the teacher's explanation → the "
                           "rule → which training examples it fixed and broke in verification → its effect on the "
                           "confirmation data (selected rules; leave-one-out, 95% interval).")]
    if not report.rules:
        out.append(Para("The compile produced no rules (see the compile section)." if report.compile else NO_CD))
    for rule in report.rules:
        state = "selected" if rule["selected"] else "not selected" if rule["verified"] else "dropped by verification"
        entry = Details(f"{rule['id']} ({state}): {rule['text']}")
        entry.blocks.append(Para(f"Predictor `{rule['predictor']}`, origin {rule['origin']}."))
        sources = [f"{s['id']}: {_short(s.get('inputs'), 200)} — gold {_short(s.get('gold'), 80)}, target said "
                   f"{_short(s.get('outputs'), 200)}; teacher: {_short(s.get('explanation') or 'n/a', 300)}"
                   for s in rule["mistakes"]]
        entry.blocks.append(Bullets(sources or ["no source mistake recorded (a rulebook rule)"]))
        check = rule.get("verification")
        entry.blocks.append(Para(
            f"Verification: fixed {len(check['fixed'])} of {len(check['checked_mistakes'])} source mistakes "
            f"{check['fixed']}, broke {len(check['broken'])} of {len(check['checked_correct'])} correct examples "
            f"{check['broken']} (training example indices)." if check else "Verification: not run for this rule."))
        if rule.get("effect") is not None:
            low, high = rule.get("effect_interval") or (rule["effect"], rule["effect"])
            entry.blocks.append(Para(f"Effect on confirmation: {rule['effect']:+.1f} points [95% CI {low:+.1f}, "
                                     f"{high:+.1f}]."))
        out.append(entry)
    if "rules" in figures:
        out.append(Figure("rules", "Rule effects on the confirmation data with 95% intervals (or, when none was "
                                   "selected, what each rule fixed and broke in verification)."))
    return out


def _search(report: MigrationReport, figures: set[str]) -> list[Any]:
    out: list[Any] = [Heading("Rule-subset search (Optuna)", "search")]
    if "search" in figures:
        out.append(Figure("search", "Each trial's score on the search part of the valset and the best so far."))
    rows = [[str(t["number"]), ", ".join(t["rule_ids"]) or "(none)", t["state"],
             _num(t["score"], 1)] for t in report.trials]
    out.append(Table(["trial", "rules", "state", "search score"], rows) if rows else
               Para("The search did not run (no rule passed verification, or the compile stopped before it)."
                    if report.compile else NO_CD))
    return out


def _compile(report: MigrationReport) -> list[Any]:
    c = report.compile
    if not c:
        return [Heading("Compile", "compile"), Para(NO_CD), Bullets(_files())]
    out: list[Any] = [Heading("Compile", "compile"), Para(c["message"]),
                      Para(f"{c['n_train']} training examples, {c['n_val']} validation examples ({c['n_search']} to "
                           f"search, {c['n_confirm']} to confirm); confirmation score {_num(c['baseline_score'], 1)} "
                           f"→ {_num(c['best_score'], 1)}.")]
    if c.get("warnings"):
        out.append(Bullets([f"Warning: {w}" for w in c["warnings"]]))
    return out + [Bullets(_files())]


def _files() -> list[str]:
    return [f"`{name}`: {what}" for name, what in (
        ("report.json", "everything above as data"), ("heldout.jsonl", "each test example's record"),
        ("rulebook.yaml", "the rules, editable (cd-dspy rulebook)"), ("compile/", "the compile's run directory"),
        ("levers/", "each other lever's compile: state.json (status, one-time usage, provenance), program.json"))]


def to_html(report: MigrationReport, items: list[Any], svgs: dict[str, str]) -> str:
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("verdict", "Verdict"), *((("levers", "Levers"),) if lever_report.shows_levers(report) else ()),
        ("scores", "Scores"), ("tests", "Paired tests"), ("flips", "Flips"),
        ("costs", "Cost"), ("rules", "Rules"), ("search", "Search"), ("compile", "Compile")))
    title = html.escape(f"Migration: {report.models['source']} → {report.models['target']}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>\n'
            f"<body><nav>{nav}</nav>\n{to_html_body(items, svgs)}\n</body></html>\n")


def write_report(report: MigrationReport, folder: Path) -> dict[str, str]:
    """Write report.json, report.md (+ plots/*.png) and report.html into `folder` (a run directory: only over
    files cd-dspy wrote, see `cd_dspy.core.run_dir`); return their paths."""
    folder = Path(folder)
    run = RunDir(folder)
    figs = plots.figures(report)
    try:
        images = {name: f"plots/{name}.png" for name in figs}
        for name, fig in figs.items():
            plots.save_png(fig, run.own(images[name]))
        svgs = {name: plots.svg_of(fig, name) for name, fig in figs.items()}
    finally:
        plots.close(figs)
    items = blocks(report, set(figs))
    report.files = {"html": str(folder / "report.html"), "markdown": str(folder / "report.md"),
                    "json": str(folder / "report.json"), "rulebook": str(folder / "rulebook.yaml")}
    run.write_text("report.md", to_markdown(items, images))
    run.write_text("report.html", to_html(report, items, svgs))
    run.write_json("report.json", report.to_dict())
    return report.files


def render_run_dir(folder: str | Path) -> dict[str, str]:
    """Re-render the report of the migration in `folder` from its report.json (no LM call)."""
    folder = Path(folder)
    report = MigrationReport.from_dict(RunDir(folder).read_json("report.json"))
    return write_report(report, folder)
