"""Dry run: what a compile would spend, from its settings and data alone (no LM is called)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from cd_dspy.phases.confirm import split_sizes


def estimate_spend(optimizer: Any, program: dspy.Module, trainset: Sequence[dspy.Example],
                   valset: Sequence[dspy.Example]) -> dict[str, Any]:
    """Estimate what `compile` would spend, without calling any LM.

    `target_calls` / `teacher_calls` are upper bounds when every call parses (each call that DSPy's
    adapter cannot parse may add one JSON-fallback call; each failed teacher call adds up to
    `teacher_retries` retries: `max_*_calls` bound those too). Tokens are a rough estimate (prompt
    characters / 4 plus an allowance per output field); compare them with caps, not invoices.
    """
    n_pred = len(program.named_predictors())
    n_mistakes = min(optimizer.max_mistakes, len(trainset))
    n_screened = 0 if optimizer.carrier == "exemplars" else optimizer.max_rules * n_pred  # exemplars: unscreened
    n_search, n_confirm = split_sizes(len(valset), optimizer.confirm_fraction)
    if optimizer.confirm_on_train:  # the training examples no tested concept came from (confirm.py), at most
        left_out = n_mistakes if optimizer.carrier == "rules" else min(n_mistakes, optimizer.max_exemplars)
        n_confirm += max(0, len(trainset) - left_out)
    collect = len(trainset) * n_pred
    rounds = optimizer.rounds if optimizer.verify else 0  # each round revises (and screens) at most every rule
    verify = (1 + rounds) * n_screened * (optimizer.verify_max_sources + optimizer.verify_correct) * n_pred \
        if optimizer.verify else 0
    if optimizer.search_skipped(len(valset)):  # only the primary subset, on every validation example
        search, confirm = 0, (2 + n_screened) * (n_confirm + n_search) * n_pred
    else:
        trials = optimizer.num_trials + max(2, optimizer.num_trials // 2)  # the study, then its refinement trials
        search = trials * n_search * n_pred
        # baseline, the primary subset, the shortlist, leave-one-out effects
        confirm = (2 + optimizer.confirm_top_k + n_screened) * n_confirm * n_pred
    select = verify + search + confirm
    solve = 2 * n_mistakes * n_pred  # the primed attempt and, when it fails, an unprimed one (cd_dspy.phases.solve)
    explained = optimizer.carrier != "exemplars"
    explain = n_mistakes * optimizer.samples_per_mistake if explained else 0
    consolidate = n_pred if optimizer.consolidate and explained else 0
    refine = rounds * n_screened  # one revision per failed rule and round (cd_dspy.phases.refine)
    target_calls, teacher_calls = collect + select, solve + explain + consolidate + refine
    prompt_tokens = _prompt_tokens(program, trainset[0])
    rules_tokens = optimizer.max_rules * 25  # at most max_rules short rules per predictor in a trial's prompt
    teacher_prompt = 4 * prompt_tokens + 300  # program description, the attempt, the metric's feedback
    estimate = {
        "n_train": len(trainset), "n_val": len(valset), "predictors": n_pred,
        "target_calls": target_calls, "collect_calls": collect, "select_calls": select,
        "verify_calls": verify, "search_calls": search, "confirm_calls": confirm,
        "teacher_calls": teacher_calls, "solve_calls": solve, "explain_calls": explain,
        "consolidate_calls": consolidate, "refine_calls": refine,
        "max_target_calls": 2 * target_calls,
        "max_teacher_calls": 2 * (optimizer.teacher_retries + 1) * teacher_calls,
        "target_tokens": collect * (prompt_tokens + 100) + select * (prompt_tokens + rules_tokens + 100),
        "teacher_tokens": teacher_calls * (teacher_prompt + 200),
        "budget": {k: v for k, v in vars(optimizer.budget).items() if v is not None},
    }
    estimate["tokens"] = estimate["target_tokens"] + estimate["teacher_tokens"]
    caps = (("max_target_calls", target_calls), ("max_teacher_calls", teacher_calls),
            ("max_tokens", estimate["tokens"]))
    budget = optimizer.budget
    estimate["exceeds_budget"] = [name for name, need in caps
                                  if getattr(budget, name) is not None and need > getattr(budget, name)]
    return estimate


def _prompt_tokens(program: dspy.Module, example: dspy.Example) -> int:
    """Rough tokens of one target prompt (the largest predictor's, formatted by the chat adapter)."""
    sizes = []
    for _, pred in program.named_predictors():
        inputs = {k: example.get(k, "") for k in pred.signature.input_fields}
        try:
            messages = dspy.ChatAdapter().format(pred.signature, demos=[], inputs=inputs)
            sizes.append(sum(len(str(m.get("content", ""))) for m in messages) // 4)
        except Exception:  # a signature the chat adapter cannot format: fall back to the instructions
            sizes.append(len(pred.signature.instructions) // 4 + 50)
    return max(sizes or [0])
