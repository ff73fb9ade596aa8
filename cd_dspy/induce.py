"""Phase 2: the teacher explains each mistake, proposes rules, then consolidates them.

Rules are addressed to the target, attributed to the predictor they serve, filtered for
instance-specific content (numbers or names copied from the mistake's question), deduplicated,
and consolidated by the teacher into at most `max_rules` per predictor, keeping provenance.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from cd_dspy.priming import primed
from cd_dspy.result import Explanation, Mistake, Rule
from cd_dspy.usage import BudgetExhausted

logger = logging.getLogger(__name__)


class ExplainMistake(dspy.Signature):
    """A small student language model ran the program described in `task` and made the mistake shown
    in `student_attempt`. Explain why the student failed. Then write rules that would have prevented
    this kind of mistake. Each rule is one short sentence addressed to the student, and general: it must
    help on other questions of the same kind, so it never mentions the specific numbers, names or answer
    of this question. Name the program step whose instructions should hold the rules."""

    task: str = dspy.InputField(desc="the program's steps, with their instructions and fields")
    student_attempt: str = dspy.InputField(desc="the inputs and what each step of the student produced")
    correct_answer: str = dspy.InputField(desc="the expected output")
    evaluation: str = dspy.InputField(desc="the metric's score and feedback on the student's output")
    steps: list[str] = dspy.InputField(desc="the names of the program's steps")
    explanation: str = dspy.OutputField(desc="why the student's output is wrong")
    step: str = dspy.OutputField(desc="one of `steps`: the step that should follow the rules")
    rules: list[str] = dspy.OutputField(desc="one to three short, general rules for the student")


class ConsolidateRules(dspy.Signature):
    """Turn candidate rules for a small student model into a short list of distinct, general rules.
    Merge duplicates and near-duplicates into one rule, rewrite rules that mention specific numbers or
    names so they are general, and drop rules that are wrong or contradict others. Each rule is one
    short sentence addressed to the student. Return at most `max_rules` rules, most useful first."""

    task: str = dspy.InputField(desc="the program step these rules are for")
    candidate_rules: list[str] = dspy.InputField()
    max_rules: int = dspy.InputField()
    rules: list[str] = dspy.OutputField()


def describe_program(program: dspy.Module) -> str:
    """A plain-text description of each predictor: name, fields and instructions."""
    parts = []
    for name, pred in program.named_predictors():
        sig = pred.signature
        parts.append(f"Step `{name}`: inputs {list(sig.input_fields)} -> outputs {list(sig.output_fields)}\n"
                     f"Instructions: {sig.instructions}")
    return "\n\n".join(parts)


def describe_attempt(mistake: Mistake) -> str:
    lines = [f"Inputs: {json.dumps(mistake.inputs, ensure_ascii=False)}"]
    for number, step in enumerate(mistake.steps, 1):
        flag = " (output could not be parsed)" if step.get("parse_failed") else ""
        lines.append(f"Step {number} `{step['predictor']}`{flag} produced: "
                     f"{json.dumps(step['outputs'], ensure_ascii=False)}")
    if not mistake.steps:
        lines.append(f"Final output: {json.dumps(mistake.outputs, ensure_ascii=False)}")
    return "\n".join(lines)


# --- rule hygiene -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NAME = re.compile(r"(?<=[a-z0-9,;:] )[A-Z][a-z]+")
_BACKTICKED = re.compile(r"`(\w+)(?:\(\))?`")
_TRIVIAL_NUMBERS = {"0", "1", "2", "10", "100", "60", "24", "12", "1000"}


def is_instance_specific(rule: str, source_texts: Sequence[str]) -> bool:
    """True when the rule copies a number (other than common constants) or a proper name from its sources.

    Proper names are the capitalised words of the sources that do not start a sentence there; code
    identifiers (in backticks, or snake_case) copied from the sources count too."""
    text = " ".join(source_texts)
    source_numbers = set(_NUMBER.findall(text))
    if any(n in source_numbers and n not in _TRIVIAL_NUMBERS for n in _NUMBER.findall(rule)):
        return True
    names = set(_NAME.findall(text))
    if any(re.search(rf"\b{re.escape(name)}\b", rule) for name in names):
        return True
    # code identifiers of the source (a function or variable name in backticks, or snake_case)
    identifiers = set(_BACKTICKED.findall(rule)) | {w for w in re.findall(r"\b\w+_\w+\b", rule)}
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in identifiers if len(word) > 2)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def similarity(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def clean_rule(text: str) -> str:
    """The rule without list markers or a "Rule 2:" label, on one line."""
    text, previous = str(text).strip(), None
    while text != previous:
        previous = text
        text = re.sub(r"^\s*(?:[-*•]|\d+[.)]|rule\s*\d*[:.])\s*", "", text, flags=re.I)
    return " ".join(text.split())


def dedupe(rules: list[tuple[str, list[str]]], threshold: float = 0.7) -> list[tuple[str, list[str]]]:
    """Merge near-duplicate (text, sources) pairs, keeping the first text and all sources."""
    kept: list[tuple[str, list[str]]] = []
    for text, sources in rules:
        for i, (other, other_sources) in enumerate(kept):
            if similarity(text, other) >= threshold:
                kept[i] = (other, sorted(set(other_sources) | set(sources)))
                break
        else:
            kept.append((text, list(sources)))
    return kept


# --- teacher calls ------------------------------------------------------------------------------

def teacher_call(predictor: dspy.Predict, retries: int, **inputs) -> dspy.Prediction:
    """Call the teacher; on an unparseable or failed reply retry with light sampling, then give up."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        config = {} if attempt == 0 else {"rollout_id": attempt, "temperature": 0.7}
        try:
            return predictor(**inputs, config=config)
        except BudgetExhausted:
            raise
        except Exception as exc:  # parse errors and LM errors alike: retry, then skip
            last = exc
            logger.warning("Teacher call failed (attempt %d of %d): %s", attempt + 1, retries + 1, exc)
    raise RuntimeError(f"teacher failed after {retries + 1} attempts: {last}")


def explain_mistakes(program: dspy.Module, mistakes: Sequence[Mistake], *, teacher_lm, priming: str | None,
                     num_threads: int, retries: int,
                     on_done: Callable[[Explanation], None]) -> list[Explanation]:
    """One teacher explanation (with rules) per mistake; each is handed to `on_done` as it finishes."""
    names = [name for name, _ in program.named_predictors()]
    task = describe_program(program)
    explain = dspy.Predict(ExplainMistake.with_instructions(primed(ExplainMistake.instructions, priming)))
    explain.set_lm(teacher_lm)

    def run(mistake: Mistake) -> Explanation:
        evaluation = f"score {mistake.score:g}" + (f"; feedback: {mistake.feedback}" if mistake.feedback else "")
        try:
            out = teacher_call(explain, retries, task=task, student_attempt=describe_attempt(mistake),
                               correct_answer=json.dumps(mistake.gold, ensure_ascii=False),
                               evaluation=evaluation, steps=names)
        except BudgetExhausted:
            return Explanation(mistake.id, "", "", [], ok=False, error="budget")
        except RuntimeError as exc:
            explanation = Explanation(mistake.id, "", "", [], ok=False, error=str(exc))
            on_done(explanation)
            return explanation
        rules = [clean_rule(r) for r in (out.rules or []) if clean_rule(r)]
        explanation = Explanation(mistake.id, _match_step(out.step, names, mistake), str(out.explanation), rules)
        on_done(explanation)
        return explanation

    executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, timeout=24 * 3600,
                                max_errors=len(mistakes) + 1)
    return [e for e in executor.execute(run, list(mistakes)) if e is not None]


def _match_step(step: object, names: list[str], mistake: Mistake) -> str:
    """The predictor the teacher named, or the best guess when it named none of them."""
    text = str(step or "").strip().strip("`'\"")
    if text in names:
        return text
    for name in names:
        if name and (name in text or text in name) and text:
            return name
    failed = [s["predictor"] for s in mistake.steps if s.get("parse_failed")]
    if failed and failed[0] in names:
        return failed[0]
    return mistake.steps[-1]["predictor"] if mistake.steps and mistake.steps[-1]["predictor"] in names else names[-1]


def build_rules(program: dspy.Module, explanations: Sequence[Explanation], mistakes: Sequence[Mistake], *,
                teacher_lm, priming: str | None, max_rules: int, consolidate: bool, retries: int,
                filter_specific: bool = True) -> list[Rule]:
    """Deduplicate, generalise and (with the teacher) consolidate proposed rules, per predictor.

    The teacher consolidates only when there is work for it: more rules than `max_rules`, or rules
    that copy numbers or names from their mistake (it is asked to generalise them). Whatever is still
    instance-specific afterwards is dropped, and general rules the consolidation lost are added back
    while there is room, so a lossy consolidation never discards a good rule.
    """
    source_text = {m.id: json.dumps(m.inputs, ensure_ascii=False) for m in mistakes}

    def specific(text: str, sources: Sequence[str]) -> bool:
        return filter_specific and is_instance_specific(text, [source_text.get(i, "") for i in sources])

    merge = dspy.Predict(ConsolidateRules.with_instructions(primed(ConsolidateRules.instructions, priming)))
    merge.set_lm(teacher_lm)
    rules: list[Rule] = []
    for name, pred in program.named_predictors():
        candidates = dedupe([(text, [e.mistake_id]) for e in explanations if e.ok and e.predictor == name
                             for text in e.rules])
        general = [(t, s) for t, s in candidates if not specific(t, s)]
        if consolidate and (len(candidates) > max_rules or len(general) < len(candidates)):
            merged = _consolidate(merge, name, pred, candidates, max_rules, retries)
            kept = [(t, s) for t, s in merged if not specific(t, s)]
            kept += [(t, s) for t, s in general if all(similarity(t, k) < 0.5 for k, _ in kept)]
        else:
            kept = general
        dropped = [t for t, s in candidates if specific(t, s) and t not in {k for k, _ in kept}]
        if dropped:
            logger.info("Induce: dropped %d instance-specific rule(s) for `%s`: %s", len(dropped), name, dropped)
        for text, sources in dedupe(kept)[:max_rules]:
            rules.append(Rule(id=f"R{len(rules) + 1}", text=text, predictor=name, sources=sorted(sources)))
    logger.info("Induce: %d rule(s) from %d explanation(s).", len(rules), len(explanations))
    return rules


def _consolidate(merge, name, pred, candidates, max_rules, retries) -> list[tuple[str, list[str]]]:
    """The teacher's consolidated rules, each with the sources of the candidates it resembles."""
    try:
        out = teacher_call(merge, retries, task=f"Step `{name}`: {pred.signature.instructions}",
                           candidate_rules=[t for t, _ in candidates], max_rules=max_rules)
    except RuntimeError as exc:
        logger.warning("Induce: consolidation failed for `%s` (%s); keeping the deduplicated rules.", name, exc)
        return candidates
    merged = []
    for text in (clean_rule(r) for r in (out.rules or [])):
        if not text:
            continue
        scores = [(similarity(text, cand), sources) for cand, sources in candidates]
        sources = sorted({s for score, srcs in scores if score >= 0.3 for s in srcs}
                         or set(max(scores, key=lambda x: x[0])[1]))
        merged.append((text, sources))
    return dedupe(merged)
