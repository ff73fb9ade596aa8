"""Phase 2a: solutions before explanations. The teacher solves each sampled mistake through the program, and
the user's metric checks every solution; only a passing one is kept.

A solution is the teacher's run of the whole program on the mistake's example: every predictor's inputs and
outputs, in the program's own format. The teacher first solves alone, as BootstrapFewShot's teacher does, and
only when that fails the metric is it primed (by default `gold`: shown the gold answer, it must derive it).
Measured on math-basic, a primed 1.5B teacher failed problems it solved alone and once stated an answer its
reasoning never computed, while unprimed traces made the better demonstrations and adapters
(docs/benchmarks.md, docs/distillation.md); the priming is the way in for mistakes beyond the teacher alone.
A solution is kept only when the metric accepts it, it does not quote an answer it was shown, and its reasoning
reaches its answer (`reaches_its_outputs`). A kept solution is a worked exemplar: a DSPy demonstration for each
predictor it ran through (`exemplar_demos`), and the teacher's explanation is written from the contrast between
the target's failed trace and it (`cd_dspy.phases.induce`), never from an explanation whose solution failed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.core.failures import LMUnavailableError, is_fatal
from cd_dspy.core.priming import Priming, primed, priming_name, shows_gold
from cd_dspy.core.result import Mistake, Solution, Step
from cd_dspy.core.run_dir import jsonable
from cd_dspy.core.usage import BudgetExhausted

logger = logging.getLogger(__name__)

SHORT_OUTPUT = 40  # characters: an output this short is an answer the reasoning should reach
REASONING = 80  # characters: an output this long is a reasoning (or code) that can show its work
_DIGIT_GROUPS = re.compile(r"(?<=\d),(?=\d{3})")  # 1,215 is written 1215 before values are looked up
SOLUTIONS_LOG = "solutions.jsonl"
# a primed solution that quotes what it was given teaches the target to quote an answer it does not have
_QUOTES_GIVEN = re.compile(r"\b(?:(?:given|correct|expected|reference|provided) (?:final )?answer|"
                           r"you are given|we are told (?:that )?the answer)\b", re.I)


def output_fields(program: dspy.Module) -> list[str]:
    """The output fields of every predictor, in order (what a gold answer answers)."""
    return list(dict.fromkeys(name for _, p in program.named_predictors() for name in p.signature.output_fields))


def primed_program(program: dspy.Module, priming: Priming, example: dspy.Example, teacher_lm: Any) -> dspy.Module:
    """A copy of `program` whose predictors carry the priming for `example` and run on `teacher_lm`."""
    copy = program.deepcopy()
    inputs, gold = dict(example.inputs()), dict(example.labels())
    fields = output_fields(program)
    for _, predictor in copy.named_predictors():
        predictor.signature = predictor.signature.with_instructions(
            primed(predictor.signature.instructions, priming, inputs, gold, fields))
        predictor.lm = teacher_lm
    return copy


TeacherCall = tuple[str, Any, dict[str, Any], dict[str, Any]]  # (predictor name, predictor, inputs, outputs)


def teacher_trace(program: dspy.Module, example: dspy.Example, *, teacher_lm: Any, priming: Priming,
                  adapter: Any = None) -> tuple[Any, list[Any], list[TeacherCall]]:
    """Run the primed teacher through `program` on `example`: (prediction, DSPy's trace, the calls of the
    program's own predictors with their output fields). Exceptions propagate."""
    teacher = primed_program(program, priming, example, teacher_lm)
    names = {id(p): n for n, p in teacher.named_predictors()}
    context = {"trace": []} | ({"adapter": adapter} if adapter is not None else {})
    with dspy.context(**context):
        prediction = teacher(**example.inputs())
        trace = list(dspy.settings.trace)
    calls = [(names[id(pred)], pred, dict(inputs), {k: outputs[k] for k in pred.signature.output_fields
                                                     if k in outputs})
             for pred, inputs, outputs in trace if id(pred) in names]
    return prediction, trace, calls


def _spellings(value: Any) -> list[str]:
    """How a short output value can be written in a text: 215.0 also as 215."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return []
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return [text, str(int(value))]
    return [text] if 0 < len(text) <= SHORT_OUTPUT else []


def reaches_its_outputs(calls: Sequence[TeacherCall]) -> bool:
    """True unless a call that wrote a long text (its reasoning) never wrote one of its short outputs in it.

    A worked exemplar whose reasoning stops before the answer ("multiply 3 by 60, add 35", answer 215) shows
    the target how to state an answer, not how to compute it. Calls with no long text, and long outputs such
    as code, are not checked."""
    for _, _, _, outputs in calls:
        texts = [_DIGIT_GROUPS.sub("", v).lower() for v in outputs.values()
                 if isinstance(v, str) and len(v) > REASONING]
        if not texts:
            continue
        for value in outputs.values():
            spellings = _spellings(value)
            if spellings and not any(s.lower() in text for s in spellings for text in texts):
                return False
    return True


def quotes_given_answer(calls: Sequence[TeacherCall]) -> bool:
    """True when a primed solution's outputs say it was handed the answer ("the given answer is ...")."""
    return any(_QUOTES_GIVEN.search(str(value)) for _, _, _, outputs in calls for value in outputs.values())


def solve_mistakes(program: dspy.Module, mistakes: Sequence[Mistake], trainset: Sequence[dspy.Example], *,
                   teacher_lm: Any, metric: ScoredMetric, priming: Priming, threshold: float, num_threads: int = 1,
                   on_done: Callable[[Solution], None] = lambda s: None, check_outage: bool = True) -> list[Solution]:
    """A checked teacher solution (or the reason there is none) for each mistake, in the mistakes' order.

    Attempts: no priming, then, if that failed (the metric, or a reasoning that never reaches its answer),
    `priming`; a primed solution that quotes the answer it was shown is refused. A teacher
    call that failed is a solution with `error` set (not finished work: a rerun tries it again); a budget stop
    raises `BudgetExhausted`, a fatal LM error (or every call failing, unless `check_outage` is off: a caller
    solving in batches checks all of them with `raise_if_every_solution_failed`) `LMUnavailableError`."""
    attempts = ["none"] + ([priming] if priming_name(priming) != "none" else [])
    fatal: list[BaseException] = []

    def solve(mistake: Mistake) -> Solution:
        example = trainset[mistake.example_index]
        tried: list[dict[str, Any]] = []
        for attempt in attempts:
            try:
                prediction, trace, calls = teacher_trace(program, example, teacher_lm=teacher_lm, priming=attempt)
            except BudgetExhausted:
                return Solution(mistake.id, ok=False, score=None, steps=[], priming=priming_name(attempt),
                                error="budget", tried=tried)
            except Exception as exc:
                if is_fatal(exc):
                    fatal.append(LMUnavailableError("teacher", teacher_lm, exc))
                logger.warning("Solve: the teacher failed on mistake %s (%s: %s).", mistake.id, type(exc).__name__,
                               exc)
                return Solution(mistake.id, ok=False, score=None, steps=[], priming=priming_name(attempt),
                                error=f"{type(exc).__name__}: {exc}", tried=tried)
            score = metric(example, prediction, trace)
            leaked = shows_gold(attempt) and quotes_given_answer(calls)
            reached = reaches_its_outputs(calls)
            tried.append({"priming": priming_name(attempt), "score": score, "quoted_given_answer": leaked,
                          "reasoning_reaches_answer": reached})
            if score >= threshold and not leaked and reached:
                steps = [Step(predictor=name, inputs=jsonable(inputs), outputs=jsonable(outputs)).to_dict()
                         for name, _, inputs, outputs in calls]
                return Solution(mistake.id, ok=True, score=score, steps=steps, priming=priming_name(attempt),
                                tried=tried)
        return Solution(mistake.id, ok=False, score=tried[-1]["score"], steps=[], priming=priming_name(attempts[-1]),
                        tried=tried)

    def solve_and_report(mistake: Mistake) -> Solution:
        solution = solve(mistake)
        on_done(solution)
        return solution

    executor = ParallelExecutor(num_threads=max(1, num_threads), disable_progress_bar=True,
                                max_errors=len(mistakes) + 1)
    solutions = executor.execute(solve_and_report, list(mistakes))
    metric.raise_if_failed()
    if any(s is None for s in solutions):  # ParallelExecutor logged the error and returned None for it
        raise RuntimeError("a solving worker raised (see the log above); nothing of it was stored as finished work.")
    if fatal:
        raise fatal[0]
    if any(s.error == "budget" for s in solutions):
        raise BudgetExhausted("teacher call budget reached while solving mistakes")
    if check_outage:
        raise_if_every_solution_failed(solutions, teacher_lm)
    logger.info("Solve: the metric accepted the teacher's solution of %d of %d mistakes.",
                sum(s.ok for s in solutions), len(solutions))
    return solutions


def raise_if_every_solution_failed(solutions: Sequence[Solution], teacher_lm: Any) -> None:
    """`LMUnavailableError` when there are solutions and every one is a failed teacher call: an outage, not a
    result."""
    failed = [s for s in solutions if s.error]
    if solutions and len(failed) == len(solutions):
        raise LMUnavailableError("teacher", teacher_lm, f"every one of the {len(solutions)} solutions failed; "
                                 f"the last: {failed[-1].error}")


def exemplar_demos(solution: Solution) -> dict[str, list[dict[str, Any]]]:
    """The solution as DSPy demonstrations, per predictor: each call's inputs and outputs (`augmented`, as
    BootstrapFewShot marks the traces it bootstraps)."""
    demos: dict[str, list[dict[str, Any]]] = {}
    for step in solution.steps:
        demos.setdefault(step["predictor"], []).append({**step["inputs"], **step["outputs"], "augmented": True})
    return demos


def describe_steps(steps: Sequence[dict[str, Any]]) -> list[str]:
    """One line per traced step (a `Step` dict): what each predictor produced, flagged when it did not parse."""
    return [f"Step {number} `{step['predictor']}`{' (output could not be parsed)' if step.get('parse_failed') else ''}"
            f" produced: {json.dumps(step['outputs'], ensure_ascii=False)}" for number, step in enumerate(steps, 1)]


def describe_solution(solution: Solution) -> str:
    """The solution's steps as text for the teacher's contrast with the target's attempt."""
    return "\n".join(describe_steps(solution.steps))
