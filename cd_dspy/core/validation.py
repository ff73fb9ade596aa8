"""Checks on what the user passes in: each bad input gets an error naming the problem and the fix."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import dspy

logger = logging.getLogger("cd_dspy")


def check_settings(*, metric: Callable, teacher_lm: Any, auto: str | None, seed: Any, num_trials: Any,
                   max_mistakes: Any, max_rules: Any, valset_fraction: float, num_threads: Any,
                   minibatch_size: Any, storage: Any, presets: dict) -> Any:
    """Validate constructor settings; return the preset they start from."""
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(example, prediction, trace=None), got {metric!r}.")
    if teacher_lm is None:
        raise ValueError("ConceptDistillation needs a teacher_lm: the strong LM that explains the target's "
                         "mistakes, e.g. teacher_lm=dspy.LM('openai/gpt-4o') or "
                         "cd_dspy.local_lm('qwen2.5-coder-1.5b').")
    if not isinstance(teacher_lm, dspy.BaseLM):
        raise TypeError(f"teacher_lm must be a dspy.LM (or another dspy.BaseLM), got {type(teacher_lm).__name__}.")
    if auto not in presets and auto is not None:
        raise ValueError(f"auto must be one of {sorted(presets)} or None, got {auto!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    for name, value in (("num_trials", num_trials), ("max_mistakes", max_mistakes), ("max_rules", max_rules),
                        ("minibatch_size", minibatch_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None (DSPy's setting), got {num_threads!r}.")
    if not 0 < valset_fraction < 1:
        raise ValueError(f"valset_fraction must be between 0 and 1 (exclusive), got {valset_fraction!r}.")
    if storage is not None:
        check_storage_url(storage)
    return presets[auto or "light"]


def check_decision_settings(*, require_significance: Any, confirm_fraction: Any, confirm_top_k: Any,
                            samples_per_mistake: Any, verify_correct: Any, verify_max_sources: Any,
                            carrier: Any = "rules", max_exemplars: Any = 4, rounds: Any = 0) -> None:
    """Validate the settings of the concepts, of verification and of the confirmation decision."""
    from cd_dspy.config import CARRIERS

    if carrier not in CARRIERS:
        raise ValueError(f"carrier must be one of {', '.join(CARRIERS)} (what a concept carries to the target), "
                         f"got {carrier!r}.")
    if require_significance is not None and not (isinstance(require_significance, float) and
                                                 0 < require_significance < 1):
        raise ValueError(f"require_significance must be a level between 0 and 1 such as 0.05 (or None to decide on "
                         f"the point estimate), got {require_significance!r}.")
    if not isinstance(confirm_fraction, int | float) or not 0 < confirm_fraction < 1:
        raise ValueError(f"confirm_fraction must be between 0 and 1 (exclusive): the share of the valset kept from "
                         f"the search to confirm its result, got {confirm_fraction!r}.")
    for name, value, least in (("confirm_top_k", confirm_top_k, 1), ("samples_per_mistake", samples_per_mistake, 1),
                               ("verify_correct", verify_correct, 0), ("verify_max_sources", verify_max_sources, 1),
                               ("max_exemplars", max_exemplars, 1), ("rounds", rounds, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int of at least {least}, got {value!r}.")


def check_storage_url(storage: Any) -> None:
    if isinstance(storage, str) and storage.endswith(".log") and "://" not in storage:
        return  # a file for Optuna's journal storage (one machine)
    if not isinstance(storage, str) or "://" not in storage:
        raise ValueError(f"storage must be an Optuna storage URL such as 'sqlite:///runs/study.db' or "
                         f"'postgresql://user:password@host/db', or a journal file path ending in .log; "
                         f"got {storage!r}.")
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in {"sqlite", "postgresql", "mysql", "oracle", "mssql"}:
        raise ValueError(f"storage URL scheme {scheme!r} is not an Optuna RDB storage; use e.g. 'sqlite:///study.db'.")


def check_program(program: Any) -> None:
    if not isinstance(program, dspy.Module):
        raise TypeError(f"The program to compile must be a dspy.Module, got {type(program).__name__}.")
    if not program.named_predictors():
        raise ValueError(f"{type(program).__name__} has no predictors (dspy.Predict, dspy.ChainOfThought, ...) "
                         "whose instructions could hold rules; add one as an attribute of the module.")


def check_examples(examples: Any, name: str) -> list[dspy.Example]:
    if examples is None or isinstance(examples, str | bytes) or not isinstance(examples, Sequence):
        raise TypeError(f"{name} must be a list of dspy.Example, got {type(examples).__name__}.")
    examples = list(examples)
    if not examples:
        raise ValueError(f"{name} is empty: Concept Distillation needs examples to find the target's mistakes; "
                         "pass a non-empty list of dspy.Example.")
    for i, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise TypeError(f"{name}[{i}] is a {type(example).__name__}, not a dspy.Example; build each item as "
                            "dspy.Example(question=..., answer=...).with_inputs('question').")
        if not input_fields(example):
            raise ValueError(f"{name}[{i}] has no input fields marked; call .with_inputs('question', ...), naming "
                             "fields the example has, on every example so DSPy knows which fields are inputs and "
                             "which are labels.")
    return examples


def input_fields(example: dspy.Example) -> list[str]:
    """The fields marked as inputs; none when `with_inputs` was never called (`Example.inputs` raises then)."""
    try:
        return list(example.inputs().keys())
    except ValueError:
        return []


def split_examples(trainset: Any, valset: Any, *, seed: int, valset_fraction: float
                   ) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """(trainset, valset) checked; without a valset, a seeded share of the trainset is held out as one."""
    trainset = check_examples(trainset, "trainset")
    if valset is not None:
        valset = check_examples(valset, "valset")
        warn_overlap(trainset, valset)
        if len(valset) < 2:
            raise ValueError("valset needs at least 2 examples: one part searches rule subsets, the other "
                             "confirms the result; pass a larger valset (dozens for a decision that can "
                             "detect gains of 10-20 points).")
        return trainset, valset
    if len(trainset) < 3:
        raise ValueError("trainset needs at least 3 examples when no valset is given (a share is held out for "
                         "searching and confirming rules); pass more examples or a valset.")
    shuffled = random.Random(seed).sample(trainset, len(trainset))
    n_val = max(2, min(len(trainset) - 1, round(len(trainset) * valset_fraction)))
    logger.info("No valset given: holding out %d of %d training examples for selection.", n_val, len(trainset))
    return shuffled[n_val:], shuffled[:n_val]


def warn_overlap(trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
    train = {_example_key(e) for e in trainset}
    shared = sum(_example_key(e) in train for e in valset)
    if shared:
        logger.warning("%d of %d valset examples are also in the trainset: the validation score will be "
                       "optimistic; use disjoint splits.", shared, len(valset))


def resolve_target_lm(program: dspy.Module, target_lm: Any, teacher_lm: Any) -> Any:
    """The LM the target runs on; raise if there is none; warn if it is the teacher."""
    if target_lm is not None and not isinstance(target_lm, dspy.BaseLM):
        raise TypeError(f"target_lm must be a dspy.LM, got {type(target_lm).__name__}.")
    lms = {id(p.lm): p.lm for _, p in program.named_predictors() if p.lm is not None}
    target = target_lm or (next(iter(lms.values())) if lms else None) or dspy.settings.lm
    if target is None:
        raise ValueError("No target LM: pass target_lm=..., bind an LM to the program with program.set_lm(lm), "
                         "or call dspy.configure(lm=...).")
    if target is teacher_lm or getattr(target, "model", 0) == getattr(teacher_lm, "model", 1):
        logger.warning("The teacher LM is the target LM (%s): the teacher explains its own mistakes, which "
                       "usually helps less than a stronger teacher.", getattr(target, "model", target))
    return target


def _example_key(example: dspy.Example) -> str:
    return json.dumps(example.inputs().toDict(), sort_keys=True, default=str)


def examples_fingerprint(examples: Sequence[dspy.Example]) -> str:
    text = json.dumps([e.toDict() for e in examples], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def program_fingerprint(program: dspy.Module) -> str:
    parts = {name: [p.signature.instructions, list(p.signature.fields)] for name, p in program.named_predictors()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
