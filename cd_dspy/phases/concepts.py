"""Concepts: what the search chooses among. A concept is a rule, a worked exemplar, or a rule with the exemplar
of the mistake it came from, as the `carrier` setting says.

- ``rules``: the teacher's rules alone (written from the contrast with a checked solution).
- ``exemplars``: each checked solution alone, as demonstrations on the predictors it ran through.
- ``both``: each rule carries the exemplar of its first source mistake; a checked solution no rule came from is
  an exemplar-only concept.

An exemplar holds its source mistake's answer, so a concept with one is never screened on that mistake (the
target would copy it): `screen_examples` picks other mistakes for it, the most alike first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cd_dspy.config import CARRIERS
from cd_dspy.core.result import Mistake, Rule, Solution
from cd_dspy.phases.collect import question_words, word_similarity
from cd_dspy.phases.solve import exemplar_demos

EXEMPLAR_ORIGIN = "exemplar"


def concept_id(predictor: str, text: str, exemplar: dict | None = None) -> str:
    """A concept's id, derived from its content (rule text and exemplar): the same concept has the same id (and
    Optuna parameter name) in every run, and a different one never inherits another's scores."""
    content = f"{predictor}\n{text}" + (f"\n{json.dumps(exemplar, sort_keys=True, default=str)}" if exemplar else "")
    return ("R" if not exemplar else "C" if text else "E") + hashlib.sha256(content.encode()).hexdigest()[:8]


def with_id(concept: Rule) -> Rule:
    """`concept` with the id its content gives it."""
    concept.id = concept_id(concept.predictor, concept.text, concept.exemplar)
    return concept


def build_concepts(carrier: str, rules: Sequence[Rule], solutions: Sequence[Solution]) -> list[Rule]:
    """The concepts for `carrier` from the induced `rules` and the checked `solutions` (failed ones ignored)."""
    if carrier not in CARRIERS:
        raise ValueError(f"carrier must be one of {CARRIERS}, got {carrier!r}.")
    solved = {s.mistake_id: s for s in solutions if s.ok and s.steps}
    if carrier == "rules":
        return list(rules)
    exemplar_only = [_exemplar_concept(s) for s in solved.values()]
    if carrier == "exemplars":
        return exemplar_only
    concepts, attached = [], set()
    for rule in rules:
        source = next((m for m in rule.sources if m in solved), None)
        if source is not None:
            attached.add(source)
            others = sorted(set(rule.sources) - {source})  # the exemplar's own source first (exemplar_sources)
            concepts.append(with_id(Rule(**{**rule.to_dict(), "exemplar": exemplar_demos(solved[source]),
                                             "sources": [source, *others]})))
        else:
            concepts.append(rule)
    return concepts + [c for c in exemplar_only if c.sources[0] not in attached]


def _exemplar_concept(solution: Solution) -> Rule:
    demos = exemplar_demos(solution)
    return with_id(Rule(id="", text="", predictor=next(iter(demos)), sources=[solution.mistake_id],
                        origin=EXEMPLAR_ORIGIN, exemplar=demos, triggers=[]))


def is_exemplar_only(concept: Rule) -> bool:
    """An exemplar with no rule: it is not screened alone, and the search tries it in sets (`max_exemplars`)."""
    return bool(concept.exemplar) and not concept.text


def exemplar_sources(concept: Rule) -> set[str]:
    """The mistakes whose answers the concept's exemplar shows (none for a rule alone): its first source."""
    return set(concept.sources[:1]) if concept.exemplar else set()


def screen_examples(concepts: Sequence[Rule], mistakes: Sequence[Mistake], max_mistakes: int) -> dict[str, list[int]]:
    """Each concept's screening mistakes (trainset indices), at most `max_mistakes`: its own sources first (but
    never one its exemplar shows), then the other mistakes most alike to its sources."""
    by_id = {m.id: m for m in mistakes}
    words = {m.id: question_words(m) for m in mistakes}
    out = {}
    for concept in concepts:
        shown = exemplar_sources(concept)
        own = [by_id[s] for s in concept.sources if s in by_id and s not in shown]
        anchors = [by_id[s] for s in concept.sources if s in by_id] or list(mistakes)
        others = sorted((m for m in mistakes if m.id not in shown and m not in own),
                        key=lambda m: (-max(word_similarity(m, a, words) for a in anchors), m.example_index))
        out[concept.id] = [m.example_index for m in (own + others)[:max_mistakes]]
    return out
