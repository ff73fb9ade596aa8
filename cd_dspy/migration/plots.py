"""The plots of a migration report (matplotlib): inline SVG for the HTML page (nothing to fetch: the
glyphs are paths), PNG files for the Markdown. Scores with their 95% intervals, the Optuna search's
history, each rule's effect on the confirmation data with its interval (or, when no rule was
selected, what each rule fixed and broke in verification), and each lever's quality kept against its cost."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

LABELS = {"source": "source", "target_before": "target before CD", "target_after": "target after CD",
          "demos": "teacher demos", "sft": "LoRA SFT", "combined": "demos → SFT → demos"}
COLORS = {"source": "#4c72b0", "target_before": "#999999", "target_after": "#dd8452", "demos": "#55a868",
          "sft": "#8172b3", "combined": "#937860"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "cd-dspy", "svg.fonttype": "path", "font.size": 9})
    return plt


def score_bars(report: Any):
    """Each program's test score with its 95% interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    runs = list(report.scores)
    for i, run in enumerate(runs):
        s = report.scores[run]
        ax.barh(i, s["score"], color=COLORS.get(run, "#777777"), height=0.6)
        ax.errorbar(s["score"], i, xerr=[[s["score"] - s["low"]], [s["high"] - s["score"]]], fmt="none",
                    ecolor="black", capsize=4)
        ax.text(s["high"] + 1.5, i, f"{s['score']:.1f}", va="center")
    ax.set_yticks(range(len(runs)), [LABELS.get(r, r) for r in runs])
    ax.invert_yaxis()
    ax.set_xlim(0, 112)  # room for the label right of a full bar
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel(f"test score (%), 95% interval, n = {report.n_test}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def optuna_history(report: Any):
    """Each trial's score on the search part and the best so far; None when the search did not run."""
    trials = [t for t in report.trials if t.get("score") is not None]
    if not trials:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    numbers = [t["number"] for t in trials]
    scores = [t["score"] for t in trials]
    best, running = [], -1.0
    for score in scores:
        running = max(running, score)
        best.append(running)
    ax.scatter(numbers, scores, s=18, color="#4c72b0", label="trial (search part)", zorder=3)
    ax.step(numbers, best, where="post", color="#dd8452", label="best so far")
    ax.set_xlabel("Optuna trial")
    ax.set_ylabel("score (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def rule_effects(report: Any):
    """Selected rules' leave-one-out effects on the confirmation data with 95% intervals; without any,
    each rule's verification (training mistakes fixed, correct examples broken). None without rules."""
    rules = report.rules
    if not rules:
        return None
    plt = _pyplot()
    measured = [r for r in rules if r.get("effect") is not None]
    shown = measured or rules
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(shown) + 1.2))
    names = [f"{r['id']}: {r['text'][:40]}{'…' if len(r['text']) > 40 else ''}" for r in shown]
    if measured:
        for i, r in enumerate(shown):
            low, high = r.get("effect_interval") or (r["effect"], r["effect"])
            ax.errorbar(r["effect"], i, xerr=[[r["effect"] - low], [high - r["effect"]]], fmt="o", capsize=4,
                        color="#dd8452")
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_xlabel("effect on the confirmation score (points), 95% interval")
    else:
        fixed = [len((r.get("verification") or {}).get("fixed", [])) for r in shown]
        broken = [len((r.get("verification") or {}).get("broken", [])) for r in shown]
        ax.barh(range(len(shown)), fixed, color="#55a868", label="mistakes fixed")
        ax.barh(range(len(shown)), [-b for b in broken], color="#c44e52", label="correct examples broken")
        ax.axvline(0, color="grey", lw=1)
        ax.set_xlabel("verification on training examples (no rule was selected, so no effect was measured)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(shown)), names)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def lever_quality_cost(report: Any):
    """Each lever's share of source quality kept (Fieller's 95% interval) against its cost per request, the source
    at 100%; None when the report compares no levers or no cost per request was measured."""
    from cd_dspy.migration.lever_report import lever_points, shows_levers

    points = lever_points(report) if shows_levers(report) else []
    source = report.costs["per_request"].get("source")
    if not points or source is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    unit = report.costs["unit"]
    for p in points:
        kept, colour = p["kept"], "#dd8452" if p["chosen"] else "#4c72b0" if p["significant"] else "#999999"
        y = 100 * (kept["estimate"] or 0.0)
        if kept["low"] is not None:
            ax.errorbar(p["cost"], y, yerr=[[y - 100 * kept["low"]], [100 * kept["high"] - y]], fmt="o", capsize=4,
                        color=colour)
        else:  # unbounded interval: the point alone, marked open
            ax.plot(p["cost"], y, "o", mfc="white", color=colour)
        ax.annotate(p["label"] + (" (chosen)" if p["chosen"] else ""), (p["cost"], y), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.plot(source, 100, "s", color="black")
    ax.annotate("source", (source, 100), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(100, color="grey", lw=1, ls="--")
    ax.set_xlabel("cost per request (" + ("$" if unit == "usd" else "seconds of LM time") + ")")
    ax.set_ylabel("source quality kept (%), 95% CI")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figures(report: Any) -> dict[str, Any]:
    """The report's figures by name (scores, search, rules, levers); a figure with nothing to show is left out."""
    made = {"scores": score_bars(report), "search": optuna_history(report), "rules": rule_effects(report),
            "levers": lever_quality_cost(report)}
    return {name: fig for name, fig in made.items() if fig is not None}


def svg_of(fig: Any, prefix: str) -> str:
    """`fig` as an inline <svg> element whose ids carry `prefix` (several SVGs share one page)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r'(\bid="|href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def save_png(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def close(figs: dict[str, Any]) -> None:
    plt = _pyplot()
    for fig in figs.values():
        plt.close(fig)
