"""Phase 2: the teacher explains each mistake, proposes rules, then consolidates them.

Rules are addressed to the target, attributed to the predictor they serve, filtered for
instance-specific content (numbers or names copied from the mistake's question), deduplicated,
and consolidated by the teacher into at most `max_rules` per predictor, keeping provenance.
"""

from __future__ import annotations

import builtins
import functools
import json
import keyword
import logging
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from cd_dspy.core.failures import LMUnavailableError, is_fatal
from cd_dspy.core.priming import primed, shows_gold
from cd_dspy.core.result import Explanation, Mistake, Rule, Solution
from cd_dspy.core.usage import BudgetExhausted
from cd_dspy.core.words import jaccard, words
from cd_dspy.phases.concepts import concept_id
from cd_dspy.phases.integrate import triggers
from cd_dspy.phases.solve import SOLUTIONS_LOG, describe_solution, describe_steps

logger = logging.getLogger(__name__)

EXPLANATIONS_LOG = "explanations.jsonl"
RULES_FILE = "rules.json"
ARTIFACTS = (SOLUTIONS_LOG, EXPLANATIONS_LOG)  # the concepts phase owns RULES_FILE
GOLD_HIDDEN = "(not shown: work out the correct answer yourself)"  # priming other than `gold` (cd_dspy.core.priming)


class ExplainMistake(dspy.Signature):
    """A small student language model ran the program described in `task` and made the mistake shown
    in `student_attempt`; `verified_solution` is a solution of the same example that was checked and is
    correct. Contrast the two: find the first step where the student departs from the correct solution, and
    explain why the student failed. Then write rules that would have prevented
    this kind of mistake on other questions. Write each rule as a condition and an action,
    "When <the kind of question or situation>, <what to do>", in one short sentence addressed to the
    student. A rule must never mention the specific numbers, names, objects or answer of this question.
    Name the program step whose instructions should hold the rules.

    How to turn a specific diagnosis into general rules (examples from other domains):
    - Diagnosis: "The student wrote 03/04/2021 for 4 March 2021 but the format asked for is day first."
      Too specific: "Write 04/03/2021." General: "When the format asks for the day first, write the day
      before the month."
    - Diagnosis: "The student called the review of the Blue Cafe positive because it mentions 'great
      location', but the review says the food was cold." Too specific: "The Blue Cafe review is
      negative." General: "When a review praises one thing but complains about the main product, judge
      it by the complaint."
    - Diagnosis: "The student returned the list reversed because it sorted [5, 2, 9] with reverse=True."
      Too specific: "Sort [5, 2, 9] as [2, 5, 9]." General: "When asked for ascending order, sort without
      reverse=True." """

    task: str = dspy.InputField(desc="the program's steps, with their instructions and fields")
    student_attempt: str = dspy.InputField(desc="the inputs and what each step of the student produced")
    verified_solution: str = dspy.InputField(desc="what each step of a checked, correct solution produced")
    correct_answer: str = dspy.InputField(desc="the expected output")
    evaluation: str = dspy.InputField(desc="the metric's score and feedback on the student's output")
    steps: list[str] = dspy.InputField(desc="the names of the program's steps")
    explanation: str = dspy.OutputField(desc="why the student's output is wrong")
    step: str = dspy.OutputField(desc="one of `steps`: the step that should follow the rules")
    rules: list[str] = dspy.OutputField(desc="one to three general rules, each 'When ..., ...'")


class ConsolidateRules(dspy.Signature):
    """Turn candidate rules for a small student model into a short list of distinct, general rules.
    Merge duplicates and near-duplicates into one rule, rewrite rules that mention specific numbers,
    names or objects (some are already replaced by placeholders such as "a number" or "someone") so
    they hold for any question of the same kind, and drop rules that are wrong or contradict others.
    Write each rule as one short sentence addressed to the student: "When <situation>, <action>".
    Return at most `max_rules` rules, most useful first."""

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
    lines = [f"Inputs: {json.dumps(mistake.inputs, ensure_ascii=False)}", *describe_steps(mistake.steps)]
    if not mistake.steps:
        lines.append(f"Final output: {json.dumps(mistake.outputs, ensure_ascii=False)}")
    return "\n".join(lines)


# --- rule hygiene -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NAME = re.compile(r"(?<=[a-z0-9,;:] )[A-Z][a-z]\w*")
_BACKTICKED = re.compile(r"`(\w+)(?:\(\))?`")
_SNAKE = re.compile(r"\b[A-Za-z]\w*_\w+\b")
_TRIVIAL_NUMBERS = {"0", "1", "2", "10", "100", "60", "24", "12", "1000"}
COPIED_RUN = 6  # a rule sharing this many consecutive words with its question copies the question
PLACEHOLDERS = {"number": "a number", "name": "someone", "identifier": "<identifier>"}


@functools.cache
def well_known_identifiers() -> frozenset[str]:
    """Names every Python programmer knows (builtins, keywords, typing, stdlib modules): general, not copied."""
    return frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(dir(typing)) \
        | frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Delexicalised:
    """A rule with what it copied from its sources replaced by placeholders."""

    text: str
    replaced: tuple[str, ...]  # the copied numbers, names and identifiers
    copied_phrase: str | None  # a run of words copied from a source (with a number, or >= COPIED_RUN long)
    leftover: tuple[str, ...] = ()  # numbers left beside placeholders: the instance was not abstracted

    @property
    def specific(self) -> bool:
        return bool(self.replaced or self.leftover) or self.copied_phrase is not None


def delexicalise(rule: str, source_texts: Sequence[str]) -> Delexicalised:
    """Replace the numbers (other than common constants), proper names and code identifiers that `rule`
    copies from its sources with placeholders, and find any phrase it copies verbatim.

    Proper names are capitalised words that do not start a sentence in the sources; identifiers are
    backticked or snake_case words. Names Python itself defines (`List`, `typing`, `sorted`) are general.
    A copied phrase is a run of three words with a number in it ("bags of 10"), or of COPIED_RUN words."""
    text = " ".join(source_texts)
    known = well_known_identifiers()
    numbers = {n for n in _NUMBER.findall(text) if n not in _TRIVIAL_NUMBERS}
    names = {n for n in _NAME.findall(text) if n not in known}
    identifiers = {w for w in set(_BACKTICKED.findall(rule)) | set(_SNAKE.findall(rule))
                   if len(w) > 2 and w not in known and re.search(rf"\b{re.escape(w)}\b", text)}
    replaced: list[str] = []
    out = rule
    substitutions = [(rf"`?\b{re.escape(w)}\b(?:\(\))?`?", w, "identifier") for w in identifiers]
    substitutions += [(rf"\b{re.escape(n)}\b", n, "name") for n in names]
    substitutions += [(rf"(?<![\d.,]){re.escape(n)}(?![\d]|[.,]\d)", n, "number") for n in numbers]
    for pattern, word, kind in sorted(substitutions, key=lambda s: -len(s[1])):
        out, count = re.subn(pattern, PLACEHOLDERS[kind], out)
        if count:
            replaced.append(word)
    placeholders = any(p in out for p in PLACEHOLDERS.values())
    leftover = tuple(n for n in _NUMBER.findall(out) if n not in _TRIVIAL_NUMBERS) if placeholders else ()
    return Delexicalised(out, tuple(replaced), _copied_phrase(out, text), leftover)


def _copied_phrase(rule: str, source: str) -> str | None:
    """A run of words `rule` shares with `source`: 3 words holding a number, or COPIED_RUN words."""
    words, source_words = _tokens(rule), _tokens(source)
    for size in (COPIED_RUN, 3):
        grams = {tuple(source_words[i:i + size]) for i in range(len(source_words) - size + 1)}
        for i in range(len(words) - size + 1):
            gram = tuple(words[i:i + size])
            if gram in grams and (size == COPIED_RUN or any(w.isdigit() for w in gram)):
                return " ".join(gram)
    return None


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())


def is_instance_specific(rule: str, source_texts: Sequence[str]) -> bool:
    """True when the rule copies a number, a name, an identifier or a phrase from its sources."""
    return delexicalise(rule, source_texts).specific


def rule_id(predictor: str, text: str) -> str:
    """A rule's id, derived from its content (`cd_dspy.phases.concepts.concept_id` of a rule without exemplar)."""
    return concept_id(predictor, text)


def similarity(a: str, b: str) -> float:
    """How alike two rules' words are (Jaccard)."""
    return jaccard(words(a), words(b))


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

def teacher_call(predictor: dspy.Predict, retries: int, sample: int = 0, **inputs) -> dspy.Prediction:
    """Call the teacher (sample 0 greedy, sample k > 0 at temperature 0.7 as DSPy rollout k); on an
    unparseable or failed reply retry as another rollout, then give up."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        rollout = sample * (retries + 1) + attempt
        config = {} if rollout == 0 else {"rollout_id": rollout, "temperature": 0.7}
        try:
            return predictor(**inputs, config=config)
        except BudgetExhausted:
            raise
        except Exception as exc:  # parse errors and transient LM errors: retry, then skip
            if is_fatal(exc):
                raise LMUnavailableError("teacher", predictor.lm, exc) from exc
            last = exc
            logger.warning("Teacher call failed (attempt %d of %d): %s", attempt + 1, retries + 1, exc)
    raise RuntimeError(f"teacher failed after {retries + 1} attempts: {last}")


def explain_mistakes(program: dspy.Module, mistakes: Sequence[Mistake], *, teacher_lm, priming: str | None,
                     num_threads: int, retries: int, on_done: Callable[[Explanation], None],
                     solutions: dict[str, Solution], samples: int = 1) -> list[Explanation]:
    """Teacher explanations (with rules) per mistake, written from the contrast between the target's attempt and
    the mistake's checked solution (`solutions`, by mistake id: every mistake passed here has one),
    `samples` of them (the first greedy, the others sampled), pooled into one Explanation; each successful
    one is handed to `on_done` as it finishes
    (failed ones are returned with ok=False but never stored, so a rerun retries them). Raises
    `LMUnavailableError` on a fatal teacher failure, or when every explanation failed."""
    names = [name for name, _ in program.named_predictors()]
    task = describe_program(program)
    gold_shown = shows_gold(priming)  # else neither the gold nor the metric's feedback (which can hold it)

    fatal: list[LMUnavailableError] = []

    def run(mistake: Mistake) -> Explanation | None:
        explain = dspy.Predict(ExplainMistake.with_instructions(
            primed(ExplainMistake.instructions, priming, mistake.inputs, mistake.gold)))
        explain.set_lm(teacher_lm)
        feedback = f"; feedback: {mistake.feedback}" if mistake.feedback and gold_shown else ""
        evaluation = f"score {mistake.score:g}{feedback}"
        correct = json.dumps(mistake.gold, ensure_ascii=False) if gold_shown else GOLD_HIDDEN
        attempt = describe_attempt(mistake)
        outs, error = [], None
        for sample in range(samples):
            try:
                outs.append(teacher_call(explain, retries, sample, task=task, student_attempt=attempt,
                                         verified_solution=describe_solution(solutions[mistake.id]),
                                         correct_answer=correct,
                                         evaluation=evaluation, steps=names))
            except BudgetExhausted:
                return Explanation(mistake.id, "", "", [], ok=False, error="budget")
            except LMUnavailableError as exc:
                fatal.append(exc)
                return None
            except RuntimeError as exc:
                error = str(exc)
        if not outs:
            logger.warning("Induce: no explanation for mistake %s (%s).", mistake.id, error)
            return Explanation(mistake.id, "", "", [], ok=False, error=error)
        rules = list(dict.fromkeys(clean_rule(r) for out in outs for r in (out.rules or []) if clean_rule(r)))
        explanation = Explanation(mistake.id, _match_step(outs[0].step, names, mistake),
                                  "\n\n".join(str(out.explanation) for out in outs), rules)
        on_done(explanation)
        return explanation

    executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, timeout=24 * 3600,
                                max_errors=len(mistakes) + 1)
    explanations = [e for e in executor.execute(run, list(mistakes)) if e is not None]
    if fatal:
        raise fatal[0]
    failed = [e for e in explanations if not e.ok and e.error != "budget"]
    if mistakes and len(failed) == len(mistakes):
        raise LMUnavailableError("teacher", teacher_lm, f"every one of the {len(mistakes)} explanations failed; "
                                 f"the last: {failed[-1].error}")
    return explanations


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


Candidate = tuple[str, list[str], str]  # (rule text, source mistake ids, origin)


def build_rules(program: dspy.Module, explanations: Sequence[Explanation], mistakes: Sequence[Mistake], *,
                teacher_lm, priming: str | None, max_rules: int, consolidate: bool, retries: int,
                filter_specific: bool = True) -> list[Rule]:
    """Deduplicate, generalise and (with the teacher) consolidate proposed rules, per predictor.

    Rules that copy specifics from their mistake are shown to the teacher delexicalised (numbers, names
    and identifiers replaced by placeholders) and it is asked to generalise them; the teacher
    consolidates only when there is such work or more rules than `max_rules`. General rules a lossy
    consolidation lost are added back. A specific rule from a mistake that no kept rule covers is kept in
    its delexicalised form (origin "delexicalised") when that form copies no phrase of its question, while
    there is room; the rest is dropped.
    """
    source_text = {m.id: json.dumps([m.inputs, m.gold, m.outputs], ensure_ascii=False) for m in mistakes}

    def delex(text: str, sources: Sequence[str]) -> Delexicalised:
        return delexicalise(text, [source_text.get(i, "") for i in sources])

    def specific(text: str, sources: Sequence[str]) -> bool:
        return filter_specific and delex(text, sources).specific

    merge = dspy.Predict(ConsolidateRules.with_instructions(primed(ConsolidateRules.instructions, priming)))
    merge.set_lm(teacher_lm)
    rules: list[Rule] = []
    for name, pred in program.named_predictors():
        candidates = dedupe([(text, [e.mistake_id]) for e in explanations if e.ok and e.predictor == name
                             for text in e.rules])
        general: list[Candidate] = [(t, s, "teacher") for t, s in candidates if not specific(t, s)]
        kept = list(general)
        if consolidate and (len(candidates) > max_rules or len(general) < len(candidates)):
            shown = [(delex(t, s).text if specific(t, s) else t, s) for t, s in candidates]
            merged = _consolidate(merge, name, pred, shown, max_rules, retries)
            every = sorted({i for _, sources in candidates for i in sources})  # a merged rule may copy any of them
            kept = [(t, s, "consolidated") for t, s in merged if not specific(t, every)]
            kept += [c for c in general if all(similarity(c[0], k[0]) < 0.5 for k in kept)]
        covered = {source for _, sources, _ in kept for source in sources}
        salvaged = [(d.text, s, "delexicalised") for t, s in candidates if specific(t, s) and not set(s) <= covered
                    for d in [delex(t, s)] if d.copied_phrase is None and not delex(d.text, s).specific]
        kept += [c for c in salvaged if all(similarity(c[0], k[0]) < 0.5 for k in kept)]
        dropped = [t for t, s in candidates if specific(t, s)]
        if dropped:
            logger.info("Induce: %d instance-specific rule(s) for `%s` (generalised, delexicalised or dropped): %s",
                        len(dropped), name, dropped)
        origin = {t: o for t, _, o in kept}
        for text, sources in dedupe([(t, s) for t, s, _ in kept])[:max_rules]:
            questions = [json.dumps(m.inputs, ensure_ascii=False) for m in mistakes if m.id in sources]
            rules.append(Rule(id=rule_id(name, text), text=text, predictor=name, sources=sorted(sources),
                              origin=origin.get(text, "teacher"), triggers=triggers(text, questions)))
    logger.info("Induce: %d rule(s) from %d explanation(s).", len(rules), len(explanations))
    return rules


def _consolidate(merge, name, pred, candidates, max_rules, retries) -> list[tuple[str, list[str]]]:
    """The teacher's consolidated rules, each with the sources of the candidates it resembles."""
    try:
        out = teacher_call(merge, retries, task=f"Step `{name}`: {pred.signature.instructions}",
                           candidate_rules=[t for t, _ in candidates], max_rules=max_rules)
    except LMUnavailableError:
        raise
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
