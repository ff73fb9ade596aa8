"""A readable Markdown report of a compile: scores, rules with provenance, trials, LM usage."""

from __future__ import annotations

import json
from pathlib import Path

from cd_dspy.core.result import ConceptDistillationResult, Rule, Verification, format_score
from cd_dspy.core.run_dir import RunDir, RunDirError


def load_result(run_dir: str | Path) -> ConceptDistillationResult:
    """The finished result in `run_dir` (or the progress snapshot of an unfinished one)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"{run} is not a run directory (it does not exist); pass the --run-dir of a compile.")
    reader = RunDir(run)
    for name in ("result.json", "progress.json"):
        if reader.exists(name):
            return ConceptDistillationResult.from_dict(reader.read_json(name))
    raise RunDirError(f"{run} holds no result.json or progress.json; was a compile run with this run_dir?")

def _status(rule: Rule) -> str:
    if rule.selected:
        if rule.effect is None:
            return "selected"
        low, high = rule.effect_interval or (rule.effect, rule.effect)
        return f"selected, effect {rule.effect:+.1f} points [95% CI {low:+.1f}, {high:+.1f}] on confirmation"
    return "not selected" if rule.verified else "dropped by verification"


def render_report(run_dir: str | Path) -> str:
    """The report of the compile in `run_dir` as Markdown text."""
    result = load_result(run_dir)
    run = Path(run_dir)
    mistakes = {}
    if (run / "mistakes.json").exists():
        mistakes = {m["id"]: m for m in json.loads((run / "mistakes.json").read_text())["mistakes"]}
    lines = [f"# Concept Distillation report: {run}", "", result.message, ""]
    decided = result.n_decided or result.n_confirm
    lines += [f"> Warning: {warning}" for warning in result.warnings]
    lines += ["", "| | examples | score |", "|---|---|---|",
              f"| train (target, no rules) | {result.n_train} | {format_score(result.train_score)} |",
              f"| confirmation: baseline | {decided} | {format_score(result.baseline_score)} |",
              f"| confirmation: returned program | {decided} | {format_score(result.best_score)} |",
              *([f"| search: baseline | {result.n_search} | {format_score(result.search_baseline_score)} |",
                 f"| search: best subset (optimistic) | {result.n_search} | {format_score(result.search_best_score)} |"]
                if result.trials else ["| search | skipped | - |"]),
              "", "The decision and the reported score come from examples the tested subset's choice did not depend "
              "on (the subset fixed before any score: every validation example and the fresh training examples; the "
              "search's picks: the part it never saw and the fresh training examples); the search's best is the "
              "maximum over many subsets and is optimistic.", ""]
    if result.candidates:
        lines += ["| confirmed subset | search score | confirmation score | difference [95% CI] | p (adjusted) | "
                  "accepted |", "|---|---|---|---|---|---|"]
        for c in result.candidates:
            low, high = c["interval"]
            lines.append(f"| {', '.join(c['rule_ids'])} | {format_score(c['search_score'])} | {c['score']:.1f} | "
                         f"{c['difference']:+.1f} [{low:+.1f}, {high:+.1f}] | {c['p_adjusted']:.3g} | "
                         f"{'yes' if c['accepted'] else 'no'} |")
        lines.append("")
    if result.stopped_early:
        lines += [f"Stopped early: {result.stopped_early}.", ""]
    lines += [f"Mistakes: {result.n_mistakes} on {result.n_train} training examples, "
              f"{result.n_mistakes_used} given to the teacher, {result.n_solved} of them solved (the solution passed "
              "the metric).", "", "## Rules", ""]
    if not result.rules:
        lines.append("No rules were induced.")
    for rule in result.rules:
        lines.append(f"- **{rule.id}** ({rule.predictor}, {rule.origin}, {_status(rule)}): {rule.text}")
        if rule.verification:
            check = Verification.from_dict(rule.verification)
            lines.append(f"  - verification: {check.describe()} (fixed {check.fixed or 'none'}, "
                         f"broke {check.broken or 'none'}: training example indices)")
        for source in rule.sources:
            mistake = mistakes.get(source)
            if mistake:
                question = json.dumps(mistake["inputs"], ensure_ascii=False)[:160]
                lines.append(f"  - from {source}: {question} (target said "
                             f"{json.dumps(mistake['outputs'], ensure_ascii=False)[:100]})")
    lines += ["", "## Trials", ""]
    lines += ["| # | rules | state | score | seconds |", "|---|---|---|---|---|"] if result.trials else [
        "None: the search did not run (the message and warnings above say why)."]
    for trial in result.trials:
        lines.append(f"| {trial.number} | {', '.join(trial.rule_ids) or '(none)'} | {trial.state} | "
                     f"{format_score(trial.score)} | {trial.seconds:.1f} |")
    lines += ["", "## LM usage", "", "| role | calls | cached calls | prompt tokens | completion tokens | cost $ |",
              "|---|---|---|---|---|---|"]
    for role, usage in result.usage.items():
        lines.append(f"| {role} | {usage.calls} | {usage.cached_calls} | {usage.prompt_tokens} | "
                     f"{usage.completion_tokens} | {usage.cost_usd:.4f} |")
    lines += ["", "## Time per phase (s)", ""]
    lines += [f"- {phase}: {seconds:.1f}" for phase, seconds in result.phase_seconds.items()]
    return "\n".join(lines) + "\n"
