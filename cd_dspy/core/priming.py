"""Response priming for the teacher (arXiv 2412.17846): one named set used wherever the teacher speaks.

A fixed instruction is put in front of the teacher's instructions: in CD's explanations and rules, and in
the demonstrations the teacher writes for distillation into weights (`cd_dspy.distill`).

- ``none``: no priming.
- ``teacher``, ``confidence``, ``ground_truth``: the paper's wording, from its released code. Despite its
  name, ``ground_truth`` never shows the gold answer ("provide a detailed answer ... feasible for smaller
  models to understand and learn from").
- ``gold``: our stronger variant. The gold answer is shown and must be justified: the teacher is told the
  correct answer and asked to derive exactly it. Where no single example is concerned (CD's rule
  consolidation) it falls back to ``ground_truth``'s wording.
- any other string with a space in it: custom text, used verbatim (the gold is not shown).
- a callable ``priming(inputs, gold) -> str``: per-example text; ``inputs`` is the example's input fields
  and ``gold`` its label fields (a dict), or ``({}, None)`` where no example is concerned. It needs a stable
  name for the run directory's keys: a ``name`` attribute, or a ``__name__`` other than ``<lambda>``. Set
  ``shows_gold = True`` on it to have CD also show the gold answer and the metric's feedback.

Only ``gold`` (or a callable with ``shows_gold``) lets CD's teacher see the gold answer and the metric's
feedback (which can contain it) when it explains a mistake; every other strategy shows the score alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

PRIMING_STRATEGIES: dict[str, str] = {
    "none": "",
    "teacher": ("As a teacher, guide your student through solving the question below. Provide a clear, simple "
                "explanation for someone unfamiliar with the problem."),
    "confidence": "Briefly double-check that your answer is correct once done.",
    "ground_truth": ("As a smart language model, provide a detailed answer that is clear and feasible for smaller "
                     "models to understand and learn from without losing too much detail."),
    "gold": ("You are given the correct answer{answer}. Work out how exactly this answer is reached and justify "
             "every step that leads to it, in a detailed explanation that smaller models can understand and learn "
             "from; never state the answer without deriving it."),
}
GOLD_STRATEGIES = frozenset({"gold"})
DEFAULT_PRIMING = "gold"

Priming = str | Callable[[Mapping[str, Any], Any], str] | None


def _callable_name(priming: Callable) -> str:
    name = getattr(priming, "name", None)
    if isinstance(name, str) and name.strip():
        return name
    name = getattr(priming, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise TypeError("a callable priming needs a stable name for the run directory's keys: define it with "
                        "`def` or set a `name` attribute on it (a lambda has none).")
    return f"{getattr(priming, '__module__', '')}.{getattr(priming, '__qualname__', name)}"


def check_priming(priming: Any) -> None:
    """Raise a clear error for anything that is not a strategy name, custom text or a named callable."""
    if priming is None or callable(priming) and not isinstance(priming, str):
        if priming is not None:
            _callable_name(priming)
        return
    if not isinstance(priming, str):
        raise TypeError(f"priming must be one of {sorted(PRIMING_STRATEGIES)}, a custom sentence or a callable "
                        f"(inputs, gold) -> str; got {type(priming).__name__} {priming!r}.")
    if priming in PRIMING_STRATEGIES:
        return
    if not priming.strip():
        raise ValueError("priming is an empty string; use 'none' for no priming.")
    if len(priming.split()) < 2:
        raise ValueError(f"unknown priming strategy {priming!r}: use one of {sorted(PRIMING_STRATEGIES)}, or a "
                         "custom instruction of several words.")


def priming_name(priming: Priming) -> str:
    """A stable name: the strategy's, "custom" for a custom text, or the callable's name."""
    check_priming(priming)
    if priming is None:
        return "none"
    if callable(priming):
        return _callable_name(priming)
    return priming if priming in PRIMING_STRATEGIES else "custom"


def shows_gold(priming: Priming) -> bool:
    """True when the strategy shows the teacher the gold answer (`gold`, or a callable with `shows_gold`)."""
    check_priming(priming)
    if callable(priming) and not isinstance(priming, str):
        return bool(getattr(priming, "shows_gold", False))
    return priming in GOLD_STRATEGIES


def format_gold(gold: Any, fields: Iterable[str] | None = None) -> str:
    """The gold answer as text: the label fields among `fields` (all of them when none match)."""
    if not isinstance(gold, Mapping):
        return _value(gold)
    wanted = [k for k in (fields or ()) if k in gold] or list(gold)
    if len(wanted) == 1:
        return _value(gold[wanted[0]])
    return "; ".join(f"{k}: {_value(gold[k])}" for k in wanted)


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def priming_text(priming: Priming, inputs: Mapping[str, Any] | None = None, gold: Any = None,
                 fields: Iterable[str] | None = None) -> str:
    """The priming instruction for one example (`inputs`, `gold`; `fields`: the outputs the gold answers)."""
    check_priming(priming)
    if priming is None:
        return ""
    if callable(priming) and not isinstance(priming, str):
        text = priming(dict(inputs or {}), gold)
        if not isinstance(text, str):
            raise TypeError(f"the priming callable {_callable_name(priming)} returned {type(text).__name__}; "
                            "it must return the priming text (str).")
        return text.strip()
    if priming in GOLD_STRATEGIES:
        if gold is None or gold == {}:
            return PRIMING_STRATEGIES["ground_truth"]
        return PRIMING_STRATEGIES[priming].format(answer=f": {format_gold(gold, fields)}")
    return PRIMING_STRATEGIES.get(priming, priming)


def primed(instructions: str, priming: Priming, inputs: Mapping[str, Any] | None = None, gold: Any = None,
           fields: Iterable[str] | None = None) -> str:
    """`instructions` with the priming instruction for this example in front."""
    prefix = priming_text(priming, inputs, gold, fields)
    return f"{prefix}\n\n{instructions}" if prefix else instructions


def priming_key(priming: Priming) -> dict[str, Any]:
    """What about the priming changes the teacher's answers (for the run directory's keys)."""
    name = priming_name(priming)
    template = None if callable(priming) and not isinstance(priming, str) else \
        PRIMING_STRATEGIES.get(priming or "none", priming)
    return {"name": name, "text": template, "shows_gold": shows_gold(priming)}
