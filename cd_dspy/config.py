"""Defaults of `ConceptDistillation`'s settings: `auto` presets, carriers, parallel LM calls."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import dspy

CARRIERS = ("rules", "exemplars", "both")  # what a concept carries to the target


@dataclass(frozen=True)
class Preset:
    max_mistakes: int
    max_rules: int
    num_trials: int


AUTO_PRESETS = {
    "light": Preset(max_mistakes=8, max_rules=5, num_trials=10),
    "medium": Preset(max_mistakes=16, max_rules=8, num_trials=24),
    "heavy": Preset(max_mistakes=32, max_rules=12, num_trials=48),
}

# The settings that shape a compile's result, recorded in the result and the run directory.
RESULT_SETTINGS = ("auto", "num_trials", "max_mistakes", "max_rules", "mistake_threshold", "priming", "consolidate",
                   "filter_specific_rules", "minibatch_size", "valset_fraction", "min_improvement",
                   "require_significance", "samples_per_mistake", "verify", "verify_correct", "verify_max_sources",
                   "confirm_fraction", "confirm_top_k", "conditional_rules", "carrier", "max_exemplars",
                   "confirm_on_train", "rounds", "seed", "study_name")


def default_threads(*lms: Any) -> int:
    """DSPy's `num_threads` for remote LMs; 1 when an LM runs in this process (an embedded model gains
    nothing from threads on a small machine, and calls queued past DSPy's straggler timeout would be
    sent twice)."""
    if any(in_process(lm) for lm in lms):
        return 1
    return int(dspy.settings.num_threads or 1)


def in_process(lm: Any) -> bool:
    """Whether `lm` runs on an engine object of its own (a local model, a simulated one) rather than DSPy's
    provider engines, named by a string ('auto', 'lm15', 'litellm') on DSPy 3.4's public `LM.engine`."""
    engine = getattr(lm, "engine", None)
    return engine is not None and not isinstance(engine, str)


@dataclass
class Budget:
    """Caps on what a compile may spend; None means no cap. Calls count cache misses only."""

    max_target_calls: int | None = None
    max_teacher_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"Budget {name} must be a non-negative number or None, got {value!r}.")


# --- grouped settings of `ConceptDistillation` ------------------------------------------------------------------

@dataclass(frozen=True)
class ConceptSettings:
    """What the teacher is shown and what comes back: the mistakes, the concepts and how they reach the target.

    max_mistakes, max_rules: override the `auto` preset (None: the preset's). mistake_threshold: an example scoring
    below it is a mistake. priming: the teacher's priming (`core.priming`): "gold", "ground_truth", ..., or a text.
    samples_per_mistake: teacher explanations per mistake (the first greedy). consolidate: let the teacher merge
    the proposed rules (else only deduplicate). filter_specific_rules: drop rules that copy numbers or names from
    their mistake. max_exemplars: at most this many exemplar-only concepts go in together (BootstrapFewShot's 4),
    searched as sets. conditional_rules: show a rule only to inputs holding its condition's keywords
    (`phases.integrate.RulePredict`). teacher_retries: retries of a teacher reply that cannot be parsed.
    rulebook: a YAML rulebook (`phases.rulebook`): pinned rules always on, dropped ones never, free ones searched.
    """

    max_mistakes: int | None = None
    max_rules: int | None = None
    mistake_threshold: float = 1.0
    priming: Any = "gold"
    samples_per_mistake: int = 1
    consolidate: bool = True
    filter_specific_rules: bool = True
    max_exemplars: int = 4
    conditional_rules: bool = False
    teacher_retries: int = 2
    rulebook: Any = None


@dataclass(frozen=True)
class VerificationSettings:
    """The screen before the search: each rule alone must fix one of its (at most `max_sources`) mistakes and
    break no more of `correct` correctly answered training examples than it fixes. Exemplar-only concepts are not
    screened. rounds: refinement rounds; in each, a rule that failed goes back to the teacher with what it did
    not fix and what it broke, for one revised rule that is screened in turn (`phases.refine`)."""

    enabled: bool = True
    correct: int = 8
    max_sources: int = 3
    rounds: int = 0


@dataclass(frozen=True)
class SearchSettings:
    """The Optuna search over concept subsets. minibatch_size: score trials in minibatches with pruning.
    storage, study_name: Optuna's storage URL (default SQLite in the run dir) and study name. workers:
    `scale.workers.Workers(setup=...)`: screen and search trials evaluated by `cd-dspy worker` processes that
    join the study in `storage`, an RDB all of them reach."""

    minibatch_size: int | None = None
    storage: str | None = None
    study_name: str = "concept-distillation"
    workers: Any = None


@dataclass(frozen=True)
class ConfirmationSettings:
    """The decision on data the search never saw. fraction: share of the valset held out to confirm.
    top_k: subsets the search ranks above the primary one that may replace it (Bonferroni over them).
    on_train: also confirm on the training examples no phase chose from. require_significance: the level of the
    one-sided paired sign test (None: the point estimate decides). min_improvement: points (0-100) the subset must
    gain. valset_fraction: share of the trainset held out as the valset when none is given."""

    fraction: float = 0.5
    top_k: int = 3
    on_train: bool = True
    require_significance: float | None = 0.05
    min_improvement: float = 0.0
    valset_fraction: float = 0.5


GROUPS = {"concepts": ConceptSettings, "verification": VerificationSettings, "search": SearchSettings,
          "confirmation": ConfirmationSettings}
# The optimizer's flat attribute of each group field (what the phases read, and the CLI's and run record's names).
FLAT_NAMES = {
    ("verification", "enabled"): "verify", ("verification", "correct"): "verify_correct",
    ("verification", "max_sources"): "verify_max_sources", ("confirmation", "fraction"): "confirm_fraction",
    ("confirmation", "top_k"): "confirm_top_k", ("confirmation", "on_train"): "confirm_on_train",
}


def flat_name(group: str, name: str) -> str:
    return FLAT_NAMES.get((group, name), name)


def flat_settings(**groups: Any) -> dict[str, Any]:
    """{flat attribute: value} of the given group objects (a group left None: its defaults)."""
    out: dict[str, Any] = {}
    for group, cls in GROUPS.items():
        value = groups.get(group)
        value = cls() if value is None else value
        if not isinstance(value, cls):
            raise TypeError(f"{group}= takes a cd_dspy.config.{cls.__name__}, got {type(value).__name__}; build one "
                            f"with the fields you change, e.g. {group}={cls.__name__}(...).")
        out.update({flat_name(group, f.name): getattr(value, f.name) for f in fields(cls)})
    return out


def grouped(**flat: Any) -> dict[str, Any]:
    """Constructor keywords from flat setting names (the CLI's flags, the run record's names): each group field
    goes into its group object, anything else stays a top-level keyword. Unknown names pass through (the
    constructor rejects them). The caps `max_target_calls`, `max_teacher_calls`, `max_tokens`, `max_cost_usd`
    become one `Budget`."""
    caps = {f.name: flat.pop(f.name) for f in fields(Budget) if f.name in flat}
    if any(v is not None for v in caps.values()):
        if flat.get("budget") is not None:
            raise TypeError(f"pass the caps either as budget= or as {', '.join(caps)}, not both.")
        flat["budget"] = Budget(**caps)
    by_flat = {flat_name(g, f.name): (g, f.name) for g, cls in GROUPS.items() for f in fields(cls)}
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        if key in by_flat:
            group, name = by_flat[key]
            groups.setdefault(group, {})[name] = value
        else:
            top[key] = value
    for group, values in groups.items():  # flat names change the group object passed with them, if any
        given = top.get(group)
        top[group] = replace(given, **values) if isinstance(given, GROUPS[group]) else GROUPS[group](**values)
    return top
