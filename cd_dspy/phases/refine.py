"""Refinement rounds: a rule that failed the screen goes back to the teacher with the mistakes it did not fix
and the correct answers it broke, for one revised rule.

The revision keeps its parent's predictor, source mistakes and exemplar (origin "refined"); it is screened like
any other rule (`verify`), and only a revision that passes goes on to the search. A revision that copies
specifics from its examples, or repeats its parent, is dropped. Each revision is logged in the run directory
(`REFINEMENTS_LOG`, keyed by the parent and what it was shown), so a rerun asks the teacher only once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from cd_dspy.core.failures import LMUnavailableError
from cd_dspy.core.keys import digest, lm_state
from cd_dspy.core.priming import primed, priming_key, shows_gold
from cd_dspy.core.result import Rule
from cd_dspy.core.usage import BudgetExhausted
from cd_dspy.phases.induce import clean_rule, delexicalise, describe_program, rule_id, teacher_call
from cd_dspy.phases.integrate import triggers

logger = logging.getLogger(__name__)

REFINEMENTS_LOG = "refinements.jsonl"
REFINED = "refined"  # a revised rule's origin


class ReviseRule(dspy.Signature):
    """You wrote `rule` for a small student language model running the program described in `task`. It was
    tested: with the rule, the student still got the questions in `not_fixed` wrong, and it got the questions
    in `broken` wrong that it answered correctly without the rule (with the expected output, when shown).
    Write one revised rule that would fix the `not_fixed` questions without breaking the `broken` ones: one
    short sentence addressed to the student,
    "When <the kind of question or situation>, <what to do>". It must never mention the specific numbers,
    names, objects or answers of these questions."""

    task: str = dspy.InputField(desc="the program's steps, with their instructions and fields")
    rule: str = dspy.InputField(desc="the rule that failed the test")
    not_fixed: str = dspy.InputField(desc="questions the rule was written for and did not fix, with the expected "
                                          "output")
    broken: str = dspy.InputField(desc="questions answered correctly without the rule and wrongly with it, with "
                                       "the expected output")
    revised_rule: str = dspy.OutputField(desc="one general rule, 'When ..., ...'")


def describe_examples(indices: Sequence[int], trainset: Sequence[dspy.Example], gold_shown: bool = True) -> str:
    """One line per training example: its inputs and, when the priming shows the gold (`core.priming.shows_gold`),
    the expected output ("(none)" when there are no examples)."""
    lines = [f"- inputs {json.dumps(dict(trainset[i].inputs()), ensure_ascii=False)}" + (
             f"; expected {json.dumps(dict(trainset[i].labels()), ensure_ascii=False)}" if gold_shown else "")
             for i in indices]
    return "\n".join(lines) or "(none)"


def revise_rules(failed: Sequence[Rule], *, program: dspy.Module, trainset: Sequence[dspy.Example],
                 teacher_lm, priming: str | None, retries: int, num_threads: int,
                 stored: dict[str, dict], on_done: Callable[[dict], None]) -> list[Rule]:
    """One revised rule per rule in `failed` (each has a `verification`), the teacher shown what its parent did
    not fix and what it broke. `stored` holds earlier revisions by key (reused, not asked again); each new
    one is handed to `on_done`. Raises `LMUnavailableError` on a fatal teacher failure and `BudgetExhausted` at a
    cap."""
    task = describe_program(program)
    stop: list[BaseException] = []  # an outage or a budget cap, raised after the other revisions
    gold_shown = shows_gold(priming)
    teacher_key = [lm_state(teacher_lm), priming_key(priming)]

    def run(rule: Rule) -> Rule | None:
        check = rule.verification or {}
        not_fixed = [i for i in check.get("checked_mistakes", []) if i not in check.get("fixed", [])]
        shown = {"task": task, "rule": rule.text, "not_fixed": describe_examples(not_fixed, trainset, gold_shown),
                 "broken": describe_examples(check.get("broken", []), trainset, gold_shown)}
        key = digest([rule.id, shown, *teacher_key])
        if key in stored:
            text = stored[key]["text"]
        else:
            revise = dspy.Predict(ReviseRule.with_instructions(primed(ReviseRule.instructions, priming)))
            revise.set_lm(teacher_lm)
            try:
                text = clean_rule(teacher_call(revise, retries, **shown).revised_rule or "")
            except (LMUnavailableError, BudgetExhausted) as exc:  # an outage or a cap: the compile stops
                stop.append(exc)
                return None
            except RuntimeError as exc:  # a teacher that failed every retry: no revision of this rule
                logger.warning("Refine: no revision of %s (%s).", rule.id, exc)
                return None
            on_done({"key": key, "parent": rule.id, "text": text})
        sources = [shown["not_fixed"], shown["broken"]]
        if not text or text == rule.text or delexicalise(text, sources).specific:
            logger.info("Refine: the revision of %s is dropped (empty, unchanged or specific): %r", rule.id, text)
            return None
        return Rule(id=rule_id(rule.predictor, text), text=text, predictor=rule.predictor,
                    sources=list(rule.sources), origin=REFINED, exemplar=rule.exemplar,
                    triggers=triggers(text, [shown["not_fixed"]]))

    executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, timeout=24 * 3600,
                                max_errors=len(failed) + 1)
    revised = [r for r in executor.execute(run, list(failed)) if r is not None]
    if stop:
        raise stop[0]
    return list({r.id: r for r in revised}.values())  # two parents may be revised into the same rule
