"""Phase 1: run the program with the target LM over the trainset and keep its mistakes.

DSPy's `bootstrap_trace_data` does the running: per-example traces (every predictor's inputs and
outputs), scores, and failed parses captured as failures instead of crashes.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.teleprompt.bootstrap_trace import FailedPrediction, bootstrap_trace_data
from dspy.utils.callback import BaseCallback

from cd_dspy.core.evaluation import ScoredMetric, program_lm
from cd_dspy.core.failures import LMUnavailableError
from cd_dspy.core.result import Mistake, Step
from cd_dspy.core.run_dir import RunDir, jsonable
from cd_dspy.core.usage import TARGET, BudgetExhausted, UsageMeter
from cd_dspy.core.words import QUESTION_WORDS, jaccard, words

logger = logging.getLogger(__name__)

COLLECT_LOG = "collect.jsonl"
MISTAKES_FILE = "mistakes.json"
ARTIFACTS = (COLLECT_LOG, MISTAKES_FILE)
PARSE_FAILURE_FEEDBACK = "The output could not be parsed: it did not follow the required output format."


def _outputs_of(prediction: Any) -> tuple[dict[str, Any], bool]:
    if isinstance(prediction, FailedPrediction):
        return {"unparsed_output": prediction.completion_text}, True
    if isinstance(prediction, dspy.Prediction):
        return jsonable(dict(prediction.items())), False
    return {"output": jsonable(prediction)}, False


COLLECT_METADATA = {"cd_dspy": "collect mistakes"}  # marks the `dspy.Evaluate` run by `collect_mistakes`


class NoProgressBar(BaseCallback):
    """A DSPy callback that turns off the progress bar of the `dspy.Evaluate` calls marked `COLLECT_METADATA`.

    DSPy 3.4's `bootstrap_trace_data` always builds its `Evaluate` with `display_progress=True` and has no
    argument to turn the bar off; its callback_metadata reaches the `Evaluate` call, whose public callback hook
    gets the instance before it runs. Only that instance changes, only where this callback is in
    `dspy.context` (this thread and the threads it starts), so nothing process-wide is patched."""

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if inputs.get("callback_metadata") == COLLECT_METADATA:
            instance.display_progress = False  # the caller shows one bar for the phase


def collect_mistakes(program: dspy.Module, trainset: Sequence[dspy.Example], metric: ScoredMetric, *,
                     num_threads: int, threshold: float) -> tuple[list[Mistake], dict[int, float]]:
    """Run `program` on `trainset`; return (mistakes, score of each example that did not crash, by position).

    Pass a throwaway copy: `bootstrap_trace_data` leaves `forward` bound on the instance it ran.
    """
    names = {id(pred): name for name, pred in program.named_predictors()}
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), NoProgressBar()]):
        records = bootstrap_trace_data(program, list(trainset), metric=metric, num_threads=num_threads,
                                       raise_on_error=False, capture_failed_parses=True, failure_score=0.0,
                                       format_failure_score=0.0, capture_crashes=True,
                                       callback_metadata=COLLECT_METADATA)
    metric.raise_if_failed()
    mistakes, scores = [], {}
    for record in records:
        index, example, score = record["example_ind"], record["example"], float(record.get("score") or 0.0)
        scores[index] = score
        if score >= threshold:
            continue
        steps, any_failed = [], False
        for predictor, inputs, outputs in record["trace"]:
            out, failed = _outputs_of(outputs)
            any_failed |= failed
            steps.append(Step(predictor=names.get(id(predictor), "?"), inputs=jsonable(dict(inputs)),
                              outputs=out, parse_failed=failed).to_dict())
        final, failed = _outputs_of(record["prediction"])
        feedback = metric.feedback.get(id(example))
        mistakes.append(Mistake(
            id=f"m{index}", example_index=index, inputs=jsonable(dict(example.inputs())),
            gold=jsonable(dict(example.labels())), outputs=final, score=score,
            feedback=feedback if feedback is not None else (PARSE_FAILURE_FEEDBACK if failed else None),
            steps=steps, parse_failed=failed or any_failed,
        ))
    return mistakes, scores


def collect_resumable(make_program: Callable[[], dspy.Module], trainset: Sequence[dspy.Example],
                      metric: ScoredMetric, run: RunDir, meter: UsageMeter, *, num_threads: int, threshold: float,
                      on_chunk: Callable[[int], Any] = lambda n: None
                      ) -> tuple[list[Mistake], float, list[int], list[int]]:
    """Collect `num_threads` examples at a time, logging each chunk to collect.jsonl: a killed run
    resumes after the last finished chunk, so no finished target call is paid for twice.

    An example whose run failed (after the LM's own retries) scores 0 here, as in selection, and is
    not stored as finished: a rerun tries it again. A fatal LM failure, or every example failing,
    raises `LMUnavailableError` before the chunk is stored.
    Returns (mistakes, train score 0-100, indices the target got right, indices that failed this time)."""
    chunks = run.read_jsonl(COLLECT_LOG)
    done = {i for chunk in chunks for i in chunk["indices"]}
    todo = [i for i in range(len(trainset)) if i not in done]
    if done:
        logger.info("Collect: reusing %d of %d scored training examples from %s.", len(done), len(trainset),
                    run.file(COLLECT_LOG))
    on_chunk(len(done))
    size = max(1, num_threads) if run.enabled else max(1, len(todo))
    failed: list[int] = []
    for start in range(0, len(todo), size):
        indices = todo[start:start + size]
        refused = meter.refused
        program = make_program()
        found, scores = collect_mistakes(program, [trainset[i] for i in indices], metric,
                                         num_threads=num_threads, threshold=threshold)
        meter.raise_if_fatal()
        if meter.refused > refused:  # failures of refused calls are not the target's mistakes
            raise BudgetExhausted(meter.exhausted or "budget reached while collecting mistakes")
        for mistake in found:  # indices are the chunk's: make them the trainset's
            mistake.example_index = indices[mistake.example_index]
            mistake.id = f"m{mistake.example_index}"
        for position in sorted(set(range(len(indices))) - set(scores)):
            failed.append(indices[position])
            meter.count_failure(TARGET, "failed_example")
            logger.warning("Collect: training example %d failed (see the DEBUG log); it scores 0 and is retried "
                           "on the next run.", indices[position])
        chunk = {"indices": [indices[p] for p in sorted(scores)], "score_sum": sum(scores.values()),
                 "mistakes": [m.to_dict() for m in found],
                 "correct": [indices[p] for p, score in sorted(scores.items()) if score >= threshold]}
        if chunk["indices"]:
            run.append_jsonl(COLLECT_LOG, chunk)
            chunks.append(chunk)
        on_chunk(len(indices))
    scored = sum(len(chunk["indices"]) for chunk in chunks)
    if trainset and scored == 0:
        raise LMUnavailableError(TARGET, program_lm(make_program()), f"every one of the {len(trainset)} training "
                                 "examples failed (see the WARNING and DEBUG log for the LM's errors)")
    mistakes = sorted((Mistake.from_dict(m) for chunk in chunks for m in chunk["mistakes"]),
                      key=lambda m: m.example_index)
    train_score = 100.0 * sum(chunk["score_sum"] for chunk in chunks) / len(trainset)  # failures score 0
    logger.info("Collect: %d of %d training examples were mistakes (train score %.1f; %d failed).",
                len(mistakes), len(trainset), train_score, len(failed))
    correct = sorted(i for chunk in chunks for i in chunk.get("correct", []))
    return mistakes, train_score, correct, failed


def question_words(mistake: Mistake) -> frozenset[str]:
    """The input's words without numbers: two questions from one template look alike."""
    return words(json.dumps(mistake.inputs), QUESTION_WORDS)


def word_similarity(a: Mistake, b: Mistake, word_sets: dict[str, frozenset[str]]) -> float:
    """Jaccard similarity of two mistakes' input words (halved when only one of them failed to parse)."""
    alike = jaccard(word_sets[a.id], word_sets[b.id], empty=1.0)
    return alike if a.parse_failed == b.parse_failed else alike / 2


def sample_mistakes(mistakes: list[Mistake], limit: int, seed: int) -> list[Mistake]:
    """Up to `limit` mistakes, seeded, as different from each other as possible, returned in trainset order (the
    order the teacher solves them in).

    Greedy farthest-first on the inputs' words (numbers left out), a format failure counting as
    unlike a wrong answer, so the teacher sees each kind of question and failure before a second of
    any. Only what the program and the metric produced decides: no label field of the examples (such
    as a task's `kind`) is read, so CD sees exactly what other optimizers see."""
    pool = random.Random(seed).sample(mistakes, len(mistakes))
    word_sets = {m.id: question_words(m) for m in pool}
    chosen: list[Mistake] = []
    while pool and len(chosen) < limit:
        pick = min(pool, key=lambda m: max((word_similarity(m, c, word_sets) for c in chosen), default=0.0))
        pool.remove(pick)
        chosen.append(pick)
    return sorted(chosen, key=lambda m: m.example_index)
