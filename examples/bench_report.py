"""The benchmark's report: its JSON, Markdown table and plot, with paired comparisons against the baseline."""

from __future__ import annotations

import json
from pathlib import Path

from bench_lib import CARRIERS, REFERENCES, calls_made, held_out_record, with_ext

from cd_dspy.core.stats import holm_adjusted

SAME_PROMPTS = ("teacher", "sft_lora")  # the baseline's program and prompts (another model, or other weights)


def gap_closed(methods: dict[str, dict], method: str = "cd") -> float | None:
    """(method - baseline) / (teacher - baseline) on test scores, or None if undefined."""
    try:
        m, base, top = (methods[k]["test"]["score"] for k in (method, "baseline", "teacher"))
    except (KeyError, TypeError):
        return None
    return None if top == base else (m - base) / (top - base)


def program_unchanged(rec: dict, baseline: dict | None) -> bool:
    """Whether `rec`'s compiled program is the baseline's: the same instructions as the baseline's record and,
    as recorded by the run, a saved state equal to a fresh program's (records without that flag: every test
    call a cache hit, the same prompts the baseline sent)."""
    same_instructions = baseline is not None and rec.get("instructions") == baseline.get("instructions")
    if "program_unchanged" in rec:
        return bool(rec["program_unchanged"]) and same_instructions
    target = rec.get("usage", {}).get("test", {}).get("target", {})
    return same_instructions and target.get("calls") == 0 and target.get("cached_calls", 0) > 0


def _verdict(vs: dict | None, unchanged: bool = False) -> str:
    if unchanged:
        return "= baseline (the method returned the program unchanged)"
    if not vs:
        return "-"
    p = vs.get("p_holm", vs["p_two_sided"])
    sig = "better than baseline" if p < 0.05 and vs["difference"] > 0 else \
        "worse than baseline" if p < 0.05 else "not distinguishable"
    holm = f" (Holm {_p(vs['p_holm'], '')})" if "p_holm" in vs else ""
    return (f"{vs['difference']:+.1f} [{vs['ci'][0]:+.1f}, {vs['ci'][1]:+.1f}]; {vs['fixed']} fixed / "
            f"{vs['broken']} broken, {_p(vs['p_two_sided'])}{holm}: {sig}")


def prompt_tokens(name: str, rec: dict, methods: dict[str, dict]) -> tuple[float | None, str]:
    """Prompt tokens per test request and where the figure comes from: counted on the method's own test calls, or
    the baseline's count for a method that sends the baseline's prompts (unchanged program, teacher, weights)."""
    if rec.get("prompt_tokens_per_call") is not None:
        return rec["prompt_tokens_per_call"], " (recounted)" if rec.get("prompt_tokens_counted") else ""
    base = methods.get("baseline", {})
    if name == "baseline":  # no count of its own (it returned above): one from a row that sent its prompts
        count = counted_on_baseline_prompts(methods)
        return count, " (counted on an unchanged row)" if count is not None else ""
    if name in SAME_PROMPTS or program_unchanged(rec, base):
        count = base.get("prompt_tokens_per_call") or counted_on_baseline_prompts(methods)
        return count, " (baseline's prompts)" if count is not None else ""
    return None, ""


def counted_on_baseline_prompts(methods: dict[str, dict]) -> float | None:
    """The prompt tokens per test request counted by a row that sent the baseline's prompts (its program returned
    unchanged), for a baseline measured before prompt tokens were counted; None if no such row."""
    base = methods.get("baseline", {})
    counts = [rec["prompt_tokens_per_call"] for name, rec in methods.items()
              if name not in SAME_PROMPTS and rec.get("prompt_tokens_per_call") is not None  # another model's count
              and rec.get("program_unchanged") and program_unchanged(rec, base)]
    return counts[0] if counts else None


def _p(p: float, prefix: str = "p") -> str:
    return f"{prefix}<0.001" if p < 0.001 else f"{prefix}={p:.3f}" if prefix else f"{p:.3f}"


def write_markdown(data: dict, path: Path) -> None:
    s = data["settings"]
    missing = [m for m in data.get("planned", []) if data["methods"].get(m, {}).get("status") != "ok"]
    lines = [f"# Benchmark: {s['task']} — target `{s['target']}`, teacher `{s['teacher']}`", ""]
    if missing:
        lines += [f"**PARTIAL: {', '.join(missing)} not finished (yet).** The rows below are final for the "
                  "methods they name.", ""]
    n_test = data["splits"]["test"]
    lines += [f"Splits: train {data['splits']['train']}, val {data['splits']['val']}, test {n_test} "
              f"(one test problem = {100 / max(1, n_test):.1f} points); trials {s['trials']}; seed {s['seed']}; "
              f"adapter {s.get('adapter', 'chat')}. Scores in %, 95% Wilson intervals; the paired column is the "
              "difference to the baseline on the same test problems with its 95% interval and an exact two-sided "
              "sign test (McNemar), Holm-adjusted over the methods in the table (the verdict uses the adjusted p). "
              "Calls are LM requests (DSPy cache hits included); prompt tokens are counted per test request with "
              "the model's own tokenizer and chat template (what a user pays per request).", "",
              "| method | carrier | test score [95% CI] | vs baseline (paired) | gap closed "
              "| prompt tokens / test call | target calls (compile/test) | teacher calls (compile/test) | wall time |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, rec in data["methods"].items():
        carrier = CARRIERS.get(name, "-")
        if rec.get("status") != "ok":
            lines.append(f"| {name} | {carrier} | error: {str(rec.get('error', ''))[:80].replace('|', '/')} "
                         f"| | | | | | {rec.get('seconds', {}).get('total', 0):.0f}s |")
            continue
        t = rec["test"]
        own = name not in ("baseline", "teacher")
        unchanged = own and program_unchanged(rec, data["methods"].get("baseline"))
        gap = gap_closed(data["methods"], name) if own and not unchanged else None
        tokens, source = prompt_tokens(name, rec, data["methods"])
        lines.append(f"| {name} | {carrier} | {t['score']:.1f} [{t['ci'][0]:.1f}, {t['ci'][1]:.1f}] "
                     f"| {_verdict(t.get('vs_baseline'), unchanged)} "
                     f"| {f'{gap:.0%}' if gap is not None else '-'} "
                     f"| {f'{tokens:.0f}' if tokens is not None else 'n/a'}{source} "
                     f"| {calls_made(rec, 'compile', 'target')} / {calls_made(rec, 'test', 'target')} "
                     f"| {calls_made(rec, 'compile', 'teacher')} / {calls_made(rec, 'test', 'teacher')} "
                     f"| {rec['seconds']['total']:.0f}s |")
    notes = [f"- {name}: {rec['config']['changed']}; budget: {rec['config'].get('budget', '-')}"
             for name, rec in data["methods"].items() if rec.get("config", {}).get("changed")]
    notes += [f"- {name}: {rec['message']}" for name, rec in data["methods"].items()
              if name == "sft_lora" and rec.get("message")]
    notes += [f"- {name}: {rec['note']}" for name, rec in data["methods"].items() if rec.get("note")]
    if notes:
        lines += ["", "Settings that differ from DSPy's defaults, and why:", *notes]
    if reference_notes(data["methods"]):
        lines += ["", "Recipes against their first step alone (paired):", *reference_notes(data["methods"])]
    lines += ["", "Gap closed = (method − baseline) / (teacher − baseline) on test, a point estimate: read it "
              "with the paired interval.", "", "Commands (each row was measured by one of them; a rerun resumes):",
              *[f"- `{c}`" for c in data.get("commands") or [data["command"]]], ""]
    path.write_text("\n".join(lines))


def write_plot(data: dict, path: Path) -> None:
    """Two panels: test score with 95% interval per method; test score vs compile-time target calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(name, rec) for name, rec in data["methods"].items() if rec.get("status") == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    points = []
    for i, (name, rec) in enumerate(ok):
        t = rec["test"]
        err = [[t["score"] - t["ci"][0]], [t["ci"][1] - t["score"]]]
        left.errorbar([t["score"]], [i], xerr=err, fmt="o", capsize=4)
        x = calls_made(rec, "compile", "target")
        right.errorbar([x], [t["score"]], yerr=err, fmt="o", capsize=4)
        points.append((name, x, t["score"]))
    for text, x, y, above in placed_labels(points):
        right.annotate(text, (x, y), textcoords="offset points", xytext=(6, 6 if above else -14))
    base = data["methods"].get("baseline", {}).get("test")
    if base:
        left.axvline(base["score"], color="grey", ls="--", lw=1)
        right.axhline(base["score"], color="grey", ls="--", lw=1)
    left.set_yticks(range(len(ok)), [n for n, _ in ok])
    left.set_xlim(-2, 102)
    left.set_xlabel("test score (%), 95% Wilson interval")
    right.set_ylim(-2, 102)
    right.margins(x=0.15)
    right.set_xlabel("target LM calls spent compiling")
    right.set_ylabel("test score (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    s = data["settings"]
    fig.suptitle(f"{s['task']}: {s['target']} / {s['teacher']}, test n={data['splits']['test']}"
                 + (" (PARTIAL)" if any(data["methods"].get(m, {}).get("status") != "ok"
                                        for m in data.get("planned", [])) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def label_groups(points: list[tuple[str, float, float]]) -> list[tuple[list[str], float, float]]:
    """Points that would print their names on top of each other (x within 10% of the widest x, score within
    2 points) share one label, so that every method's name stays readable."""
    width = _width(points)
    groups: list[tuple[list[str], float, float]] = []
    for name, x, y in points:
        near = next((g for g in groups if abs(g[1] - x) <= 0.1 * width and abs(g[2] - y) <= 2), None)
        if near:
            near[0].append(name)
        else:
            groups.append(([name], x, y))
    return groups


def placed_labels(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float, bool]]:
    """(text, x, y, above) per label group: a label goes below its point when a neighbouring group (another group
    with x within 12% of the widest x, the same x included) scores higher, above when one scores lower, else
    alternately."""
    groups = label_groups(points)
    width = _width(points)
    placed = []
    for i, (names, x, y) in enumerate(groups):
        near = [g[2] for j, g in enumerate(groups) if j != i and abs(g[1] - x) <= 0.12 * width]
        above = any(v < y for v in near) or (not any(v > y for v in near) and i % 2 == 0)
        placed.append((", ".join(names), x, y, above))
    return placed


def _width(points: list[tuple[str, float, float]]) -> float:
    return max([x for _, x, _ in points] + [1])


def compare_with_baseline(methods: dict[str, dict]) -> None:
    """Give every finished method's test record its paired comparison with the baseline (when it has run), with
    the p-values Holm-adjusted over all the methods compared."""
    base = (methods.get("baseline", {}).get("test") or {}).get("scores")
    for name, rec in methods.items():
        if rec.get("status") == "ok" and name != "baseline":
            rec["test"] = held_out_record(rec["test"]["scores"], base)
    compared = [rec["test"]["vs_baseline"] for rec in methods.values()
                if rec.get("status") == "ok" and "vs_baseline" in rec["test"]]
    for vs, p in zip(compared, holm_adjusted([vs["p_two_sided"] for vs in compared]), strict=True):
        vs["p_holm"] = p
    for name, reference in REFERENCES.items():  # a recipe against its first step alone, on the same problems
        rec, ref = methods.get(name, {}), methods.get(reference, {})
        if rec.get("status") == ref.get("status") == "ok":
            vs = held_out_record(rec["test"]["scores"], ref["test"]["scores"]).get("vs_baseline")
            rec["test"]["vs_reference"] = {"reference": reference, **vs} if vs else None


def reference_notes(methods: dict[str, dict]) -> list[str]:
    """One line per row compared with a reference row (`REFERENCES`)."""
    lines = []
    for name, rec in methods.items():
        vs = (rec.get("test") or {}).get("vs_reference") if rec.get("status") == "ok" else None
        if vs:
            lines.append(f"- {name} against {vs['reference']} on the same problems: {vs['difference']:+.1f} "
                         f"[{vs['ci'][0]:+.1f}, {vs['ci'][1]:+.1f}], {vs['fixed']} fixed / {vs['broken']} broken, "
                         f"exact two-sided {_p(vs['p_two_sided'])}")
    return lines


def save_all(data: dict, out: Path) -> None:
    """Write <out>.json, <out>.md and <out>.png (paired comparisons and gap closed refreshed first)."""
    compare_with_baseline(data["methods"])
    data["gap_closed"] = {m: gap_closed(data["methods"], m) for m in data["methods"]
                          if m not in ("baseline", "teacher")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = with_ext(out, ".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(with_ext(out, ".json"))
    write_markdown(data, with_ext(out, ".md"))
    write_plot(data, with_ext(out, ".png"))
