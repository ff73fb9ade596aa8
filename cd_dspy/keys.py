"""Content keys: a hash of everything that produced an artifact, so a changed input redoes exactly the
work it affects (and a rerun never replays an answer given under other conditions).

A program's key covers each predictor's instructions, field names and types, demos and LM settings
(model, temperature, max_tokens, api_base, ...; never keys or tokens), and the adapter in force.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from cd_dspy.priming import priming_key

# secrets (api_key, hf_token, ...) never enter a key; max_tokens does (it changes answers)
_SECRET = re.compile(r"key|secret|password|auth|token$", re.I)


def digest(value: Any) -> str:
    """A short stable hash of JSON-able `value` (other objects by their string form)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lm_state(lm: Any) -> dict[str, Any] | None:
    """What about an LM changes its answers: the model and its settings, without secrets."""
    if lm is None:
        return None
    kwargs = getattr(lm, "kwargs", {}) or {}
    engine = getattr(lm, "engine", None)  # an in-process engine's settings (e.g. grammar) change answers too
    engine = getattr(engine, "inner", engine)  # a wrapper such as faults.FaultyEngine: its answers are the inner's
    dump = getattr(engine, "dump_state", None)
    return {"model": getattr(lm, "model", str(lm)), "model_type": getattr(lm, "model_type", None),
            "engine": dump() if callable(dump) else None,
            **{k: v for k, v in kwargs.items() if not _SECRET.search(k)}}


def adapter_state() -> str:
    adapter = dspy.settings.adapter
    return type(adapter).__name__ if adapter is not None else "ChatAdapter (DSPy's default)"


def predictor_state(predictor: Any) -> dict[str, Any]:
    signature = predictor.signature
    fields = [[name, str(field.annotation), (field.json_schema_extra or {}).get("desc")]
              for name, field in signature.fields.items()]
    demos = [dict(demo) if hasattr(demo, "items") else str(demo) for demo in predictor.demos or []]
    return {"instructions": signature.instructions, "fields": fields, "demos": demos,
            "lm": lm_state(predictor.lm or dspy.settings.lm),
            "conditional_rules": getattr(predictor, "conditional_rules", None)}


def program_key(program: dspy.Module) -> str:
    """A key of everything that shapes the program's calls: predictors, demos, LMs and the adapter."""
    return digest([{name: predictor_state(p) for name, p in program.named_predictors()}, adapter_state()])


def metric_key(metric: Callable) -> str:
    """A key of the metric's identity: its qualified name and, where Python has it, its source."""
    inner = getattr(metric, "metric", metric)  # a ScoredMetric wraps the user's metric
    try:
        source = inspect.getsource(inner)
    except (OSError, TypeError):
        source = repr(inner)
    return digest([getattr(inner, "__module__", None), getattr(inner, "__qualname__", type(inner).__name__), source])


def examples_key(examples: Sequence[dspy.Example]) -> str:
    return digest([[e.toDict(), sorted(e.inputs().keys())] for e in examples])


def phase_keys(cd: Any, program: dspy.Module, trainset: Sequence[dspy.Example],
               valset: Sequence[dspy.Example]) -> dict[str, str]:
    """The key of each phase's inputs for the optimizer `cd` (each includes the keys before it);
    `program` is the user's program bound as the target will run it."""
    collect = digest([examples_key(trainset), program_key(program), metric_key(cd.metric), cd.mistake_threshold])
    induce = digest([collect, lm_state(cd.teacher_lm), priming_key(cd.priming), cd.max_mistakes, cd.max_rules,
                     cd.consolidate, cd.filter_specific_rules, cd.samples_per_mistake, cd.seed])
    select = digest([induce, examples_key(valset), cd.verify, cd.verify_correct, cd.conditional_rules,
                     cd.verify_max_sources, cd.confirm_fraction, cd.num_trials, cd.minibatch_size])
    return {"collect": collect, "induce": induce, "select": select}
