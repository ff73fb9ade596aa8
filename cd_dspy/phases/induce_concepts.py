"""Phase 2, resumable: solve the sampled mistakes (teacher, checked by the metric), explain the solved ones from
the contrast with their solution, build the rules, and turn rules and solutions into the concepts the search
chooses among (`cd_dspy.phases.concepts`, by `carrier`).

Artifacts: `solutions.jsonl` (one finished solution per line), `explanations.jsonl`, `rules.json` (the concepts).
A teacher call that failed is never stored: a rerun tries it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.core.progress import Progress
from cd_dspy.core.result import ConceptDistillationResult, Explanation, Mistake, Rule, Solution
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import BudgetExhausted
from cd_dspy.phases.concepts import build_concepts, with_id
from cd_dspy.phases.induce import EXPLANATIONS_LOG, RULES_FILE, build_rules, explain_mistakes
from cd_dspy.phases.solve import SOLUTIONS_LOG, raise_if_every_solution_failed, solve_mistakes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InduceSettings:
    """What the teacher's part of a compile needs from the optimizer's settings."""

    teacher_lm: Any
    priming: Any
    carrier: str
    max_rules: int
    consolidate: bool
    filter_specific: bool
    samples_per_mistake: int
    retries: int
    threshold: float
    threads: int
    enough: int | None = None  # stop solving once this many solutions passed (exemplars with no search); None: all


def induce_concepts(program: dspy.Module, used: Sequence[Mistake], trainset: Sequence[dspy.Example],
                    metric: ScoredMetric, settings: InduceSettings, run: RunDir, result: ConceptDistillationResult,
                    progress: Progress) -> list[Rule]:
    """The concepts for the sampled mistakes `used` (reused from `run` when every step of them is finished)."""
    solutions, solved_now = _solve(program, used, trainset, metric, settings, run, progress)
    solved = [m for m in used if m.id in solutions and solutions[m.id].ok]
    result.n_solved, result.n_mistakes_used = len(solved), sum(m.id in solutions for m in used)
    explain = settings.carrier != "exemplars"
    done = {e["mistake_id"]: Explanation.from_dict(e) for e in run.read_jsonl(EXPLANATIONS_LOG)
            if e.get("ok", True)}  # a failed explanation is never finished work
    todo = [m for m in solved if m.id not in done] if explain else []
    if run.exists(RULES_FILE) and not todo and not solved_now:  # built from every solution and explanation
        concepts = [with_id(Rule.from_dict(r)) for r in run.read_json(RULES_FILE)]
        logger.info("Induce: reusing %d concepts from %s.", len(concepts), run.file(RULES_FILE))
        return concepts
    rules: list[Rule] = []
    if explain and solved:
        explanations = _explain(program, solved, todo, done, solutions, settings, run, progress)
        rules = build_rules(program, explanations, solved, teacher_lm=settings.teacher_lm, priming=settings.priming,
                            max_rules=settings.max_rules, consolidate=settings.consolidate, retries=settings.retries,
                            filter_specific=settings.filter_specific)
    concepts = build_concepts(settings.carrier, rules, list(solutions.values()))
    run.write_json(RULES_FILE, [c.to_dict() for c in concepts])
    return concepts


def _solve(program, used, trainset, metric, settings: InduceSettings, run: RunDir,
           progress: Progress) -> tuple[dict[str, Solution], bool]:
    """The used mistakes' solutions (finished ones read back), in their order until `settings.enough` passed, and
    whether this run solved one anew."""
    done = {s["mistake_id"]: Solution.from_dict(s) for s in run.read_jsonl(SOLUTIONS_LOG) if s.get("error") is None}
    solutions = {m.id: done[m.id] for m in used if m.id in done}
    todo = [m for m in used if m.id not in done]
    bar = progress.bar("solve mistakes (teacher)", total=len(used), initial=len(used) - len(todo))

    def on_done(solution: Solution) -> None:
        if solution.error is None and metric.error is None:  # a failed teacher call or metric is not finished work
            run.append_jsonl(SOLUTIONS_LOG, solution.to_dict())
        bar.update(1)

    fresh: list[Solution] = []
    while todo:  # all at once, or in batches of as many as still missing
        missing = len(todo) if settings.enough is None else settings.enough - sum(s.ok for s in solutions.values())
        if missing <= 0:
            break
        batch, todo = todo[:missing], todo[missing:]
        solved = solve_mistakes(program, batch, trainset, teacher_lm=settings.teacher_lm, metric=metric,
                                priming=settings.priming, threshold=settings.threshold, num_threads=settings.threads,
                                on_done=on_done, check_outage=False)  # one failed call in a batch of one is no outage
        fresh += solved
        solutions.update({s.mistake_id: s for s in solved})
    bar.close()
    raise_if_every_solution_failed(fresh, settings.teacher_lm)
    progress.note(f"solve: the metric accepted the teacher's solution of {sum(s.ok for s in solutions.values())} "
                  f"of {len(solutions)} mistakes" + (f" (enough for the {settings.enough} exemplars tested)"
                                                     if len(solutions) < len(used) else ""))
    return solutions, any(s.ok for s in fresh)


def _explain(program, solved, todo, done, solutions, settings: InduceSettings, run: RunDir,
             progress: Progress) -> list[Explanation]:
    bar = progress.bar("explain mistakes", total=len(solved), initial=len(solved) - len(todo))

    def on_done(explanation: Explanation) -> None:
        run.append_jsonl(EXPLANATIONS_LOG, explanation.to_dict())
        bar.update(1)

    fresh = explain_mistakes(program, todo, teacher_lm=settings.teacher_lm, priming=settings.priming,
                             num_threads=settings.threads, retries=settings.retries, on_done=on_done,
                             solutions=solutions, samples=settings.samples_per_mistake) if todo else []
    bar.close()
    if any(e.error == "budget" for e in fresh):
        raise BudgetExhausted("teacher call budget reached while explaining mistakes")
    by_id = {**done, **{e.mistake_id: e for e in fresh}}
    explanations = [by_id[m.id] for m in solved if m.id in by_id]
    failed = sum(not e.ok for e in explanations)
    if failed:
        logger.warning("Induce: %d of %d teacher explanations failed and were skipped.", failed, len(explanations))
    return explanations
