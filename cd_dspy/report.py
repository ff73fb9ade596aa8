"""A readable Markdown report of a compile: scores, rules with provenance, trials, LM usage."""

from __future__ import annotations

import json
from pathlib import Path

from cd_dspy.result import ConceptDistillationResult, format_score
from cd_dspy.run_dir import RunDir, RunDirError


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



def render_report(run_dir: str | Path) -> str:
    """The report of the compile in `run_dir` as Markdown text."""
    result = load_result(run_dir)
    run = Path(run_dir)
    mistakes = {}
    if (run / "mistakes.json").exists():
        mistakes = {m["id"]: m for m in json.loads((run / "mistakes.json").read_text())["mistakes"]}
    lines = [f"# Concept Distillation report: {run}", "", result.message, "",
             "| | score |", "|---|---|",
             f"| train (target, no rules) | {format_score(result.train_score)} |",
             f"| validation baseline | {format_score(result.baseline_score)} |",
             f"| validation best | {format_score(result.best_score)} |", ""]
    if result.p_value is not None:
        lines += [f"Paired sign test, best subset vs baseline on the valset: p = {result.p_value:.3g}.", ""]
    if result.stopped_early:
        lines += [f"Stopped early: {result.stopped_early}.", ""]
    lines += [f"Mistakes: {result.n_mistakes} on {result.n_train} training examples, "
              f"{result.n_mistakes_used} explained by the teacher.", "", "## Rules", ""]
    if not result.rules:
        lines.append("No rules were induced.")
    for rule in result.rules:
        mark = "selected" if rule.selected else "not selected"
        effect = "n/a" if rule.effect is None else f"{rule.effect:+.1f}"
        lines.append(f"- **{rule.id}** ({rule.predictor}, {mark}, effect {effect} points): {rule.text}")
        for source in rule.sources:
            mistake = mistakes.get(source)
            if mistake:
                question = json.dumps(mistake["inputs"], ensure_ascii=False)[:160]
                lines.append(f"  - from {source}: {question} (target said "
                             f"{json.dumps(mistake['outputs'], ensure_ascii=False)[:100]})")
    lines += ["", "## Trials", "", "| # | rules | state | score | seconds |", "|---|---|---|---|---|"]
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
