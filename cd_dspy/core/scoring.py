"""Each example's score of a program, in order, with the positions of the examples whose run failed.

`score_examples` is the held-out evaluator (`heldout.HeldOutRunner`) as compile, distill and the example scripts
use it: a failed run (an LM error, an unparseable reply) scores 0 and DSPy's error dump goes to the DEBUG log;
`per_example_scores` adds one WARNING counting them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cd_dspy.core.heldout import HeldOutRunner
from cd_dspy.core.run_dir import RunDir


@dataclass
class ExampleScores:
    """Each example's score, in order, and the positions of the examples whose run failed (scored 0)."""

    scores: list[float]
    failed: list[int] = field(default_factory=list)


def score_examples(program: Any, examples: Sequence[Any], metric: Callable, threads: int | None, *,
                   run_dir: str | os.PathLike | RunDir | None = None, name: str = "program") -> ExampleScores:
    """Score `program` on each example with the one held-out evaluator (`heldout.HeldOutRunner`): a failed run
    (an LM error, an unparseable reply) scores 0 however many fail and its position goes to `failed` (DSPy's
    error, with the whole LM reply, to the DEBUG log); an LM outage raises. With `run_dir`, every scored example
    is stored there as it finishes and a rerun scores only the missing ones."""
    if not examples:
        return ExampleScores([])
    folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    runner = HeldOutRunner(examples, metric, run_dir=folder, num_threads=threads or 1, warn_each=False)
    records = runner.run(program, name)
    return ExampleScores([r.score for r in records], [r.index for r in records if r.failed])


def per_example_scores(program: Any, examples: Sequence[Any], metric: Callable, threads: int | None) -> list[float]:
    """The metric's score of `program` on each example, in order (a failed prediction scores 0, however many fail:
    DSPy's default would cancel the whole evaluation after 10 unparseable replies); one WARNING counts failures."""
    outcome = score_examples(program, examples, metric, threads)
    if outcome.failed:
        logging.getLogger("cd_dspy").warning("%d of %d examples failed and scored 0 (positions %s; DSPy's errors "
                                             "are in the DEBUG log).", len(outcome.failed), len(outcome.scores),
                                             ", ".join(map(str, outcome.failed)))
    return outcome.scores
