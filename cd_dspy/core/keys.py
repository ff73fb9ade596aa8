"""Content keys: a hash of everything that produced an artifact, so a changed input redoes exactly the
work it affects (and a rerun never replays an answer given under other conditions).

A program's key covers each predictor's instructions, field names and types, demos and LM settings
(model, temperature, max_tokens, api_base, ...; never keys or tokens), the adapter in force (its class), and
the program's code: every class of the modules in the program tree and their base classes (user classes by
their compiled methods and what those reference, through `code_keys.CodeKeyer`; DSPy's and other libraries'
classes by name and package version) and the plain attributes of user modules (`self.k = 3`).

A metric's key covers its compiled code, closure cell values, default arguments and the globals it references
(user helper functions and classes followed `code_keys.HELPER_DEPTH` references deep, constants and objects by
value); see `code_keys` for exactly what is and is not followed. A metric holding something that cannot be
keyed gets a key unique to this process: its phases are redone on every run instead of replayed (and workers
in other processes refuse it), with one warning saying what could not be keyed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from cd_dspy.core.code_keys import CodeKeyer, is_library
from cd_dspy.core.lm_state import lm_state, lm_without_secrets, without_secrets  # noqa: F401 (keys.lm_state etc.)
from cd_dspy.core.priming import priming_key

logger = logging.getLogger(__name__)

_PROCESS_NONCE = uuid.uuid4().hex  # the key part of what cannot be keyed: unique to this process
# dspy.Module's own bookkeeping, and the compile record an optimizer attaches (GEPA's and CD's detailed_results)
_MODULE_BASE_ATTRIBUTES = frozenset({"_compiled", "callbacks", "history", "detailed_results"})
_warned: set[str] = set()
_warned_lock = threading.Lock()


def digest(value: Any) -> str:
    """A short stable hash of JSON-able `value` (other objects by their string form)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def program_code(program: dspy.Module) -> list[Any]:
    """The program's code as data: its class, DSPy's version, every class (and base class) of the modules in
    its tree, and the plain attributes of user modules. Something a user module or its code holds that cannot
    be keyed (a client object) is keyed by its type only: the key must be the same in every process (worker
    processes and reruns compare it), and such objects are outside services rather than code."""
    from dspy.primitives.base_module import BaseModule

    keyer = CodeKeyer()
    classes: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for path, module in program.named_sub_modules():
        for cls in type(module).__mro__:
            name = f"{cls.__module__}.{cls.__qualname__}"
            if cls is not object and name not in classes:
                classes[name] = keyer.class_key(cls, f"program class {cls.__qualname__}", 0)
        if not isinstance(module, dspy.Predict) and not is_library(type(module)):
            attributes[path] = {k: keyer.value(v, f"program attribute {path}.{k}", 1)
                                for k, v in vars(module).items()
                                if k not in _MODULE_BASE_ATTRIBUTES and not isinstance(v, BaseModule)}
    if keyer.unkeyed:
        _warn_once(logging.DEBUG, f"Keys: the program's {'; '.join(keyer.unkeyed)} are keyed by their type only.")
    return [f"{type(program).__module__}.{type(program).__qualname__}", dspy.__version__, classes, attributes]


def program_key(program: dspy.Module) -> str:
    """A key of everything that shapes the program's calls: its code, predictors, demos, LMs and the adapter."""
    return digest([program_code(program), {name: predictor_state(p) for name, p in program.named_predictors()},
                   adapter_state()])


def metric_key(metric: Callable) -> str:
    """A key of the metric: its code, closure values, defaults and referenced globals (`code_keys.CodeKeyer`).

    Where part of it cannot be keyed (an object with a default repr and no plain attributes, such as a client
    or a C extension object), one warning says what, and the key holds a per-process nonce: every new run
    redoes the metric's phases rather than replaying them (within one process the key stays the same)."""
    inner = getattr(metric, "metric", metric)  # a ScoredMetric wraps the user's metric
    keyer = CodeKeyer()
    name = getattr(inner, "__qualname__", type(inner).__qualname__)
    state = keyer.value(inner, f"metric {name!r}")  # a callable object: its class (with __call__) and its state
    if keyer.unkeyed:
        _warn_once(logging.WARNING, f"Keys: cannot key the metric's {'; '.join(keyer.unkeyed)}; its phases are "
                   "redone on every run instead of replayed (and workers in other processes refuse it). To make "
                   "it keyable, give it plain-data state (numbers, strings, containers) or objects whose repr "
                   "shows their state.")
        state = [state, _PROCESS_NONCE]
    return digest(state)


def _warn_once(level: int, message: str) -> None:
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.log(level, message)


def examples_key(examples: Sequence[dspy.Example]) -> str:
    return digest([[e.toDict(), sorted(e.inputs().keys())] for e in examples])


def phase_keys(cd: Any, program: dspy.Module, trainset: Sequence[dspy.Example],
               valset: Sequence[dspy.Example]) -> dict[str, str]:
    """The key of each phase's inputs for the optimizer `cd` (each includes the keys before it);
    `program` is the user's program bound as the target will run it."""
    collect = digest([examples_key(trainset), program_key(program), metric_key(cd.metric), cd.mistake_threshold])
    # the teacher's solutions and explanations; then the concepts built from them (a new carrier or rule cap
    # rebuilds the concepts without paying the teacher again for what it already solved and explained)
    induce = digest([collect, lm_state(cd.teacher_lm), priming_key(cd.priming), cd.max_mistakes,
                     cd.samples_per_mistake, cd.seed])
    concepts = digest([induce, cd.carrier, cd.max_rules, cd.consolidate, cd.filter_specific_rules])
    select = digest([concepts, examples_key(valset), cd.verify, cd.verify_correct, cd.conditional_rules,
                     cd.verify_max_sources, cd.confirm_fraction, cd.num_trials, cd.minibatch_size, cd.max_exemplars,
                     cd.confirm_on_train, *([cd.rounds] if cd.rounds else [])])  # rounds 0: earlier runs' keys
    return {"collect": collect, "induce": induce, "concepts": concepts, "select": select}
