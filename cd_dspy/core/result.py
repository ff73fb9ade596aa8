"""Plain records passed between the phases, and the result of a compile.

Every record converts to and from plain JSON-ready dicts, so a run directory can be read back
(resume, reports) without pickling anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

RESULT_FORMAT_VERSION = 2


def format_score(score: float | None) -> str:
    """A 0-100 score for people: one decimal, or "n/a" when there is none."""
    return "n/a" if score is None else f"{score:.1f}"


class _Record:
    """Shared `to_dict/from_dict` for flat dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Step(_Record):
    """One predictor call inside a traced program run."""

    predictor: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parse_failed: bool = False


@dataclass
class Mistake(_Record):
    """A training example the target LM got wrong, with everything the teacher needs."""

    id: str
    example_index: int
    inputs: dict[str, Any]
    gold: dict[str, Any]
    outputs: dict[str, Any]
    score: float
    feedback: str | None
    steps: list[dict[str, Any]]
    parse_failed: bool = False


@dataclass
class Solution(_Record):
    """The teacher's run of the program on one mistake's example, checked by the metric (`cd_dspy.phases.solve`)."""

    mistake_id: str
    ok: bool  # the metric accepted it (and it does not quote an answer it was shown)
    score: float | None
    steps: list[dict[str, Any]]  # Step dicts: each predictor call's inputs and outputs
    priming: str  # the priming of the attempt that is kept (or the last one tried)
    error: str | None = None  # the teacher's call failed: not finished work, a rerun tries again
    tried: list[dict[str, Any]] = field(default_factory=list)  # each attempt's priming, score, quoted answer


@dataclass
class Explanation(_Record):
    """The teacher's diagnosis of one mistake and the rules it proposed."""

    mistake_id: str
    predictor: str
    explanation: str
    rules: list[str]
    ok: bool = True
    error: str | None = None


@dataclass
class Rule(_Record):
    """A concept for the target: a general instruction attributed to one predictor and/or a worked exemplar
    (the teacher's checked solution of a source mistake, as demonstrations per predictor)."""

    id: str
    text: str  # "" for an exemplar-only concept
    predictor: str
    sources: list[str] = field(default_factory=list)  # mistake ids the rule came from
    origin: str = "teacher"  # "teacher", "consolidated", "delexicalised", "exemplar"
    exemplar: dict[str, list[dict[str, Any]]] | None = None  # predictor name -> demos (cd_dspy.phases.solve)
    triggers: list[str] | None = None  # keyword stems of its condition (conditional rules); [] = always on
    verification: dict[str, Any] | None = None  # Verification.to_dict(): fixed/broken training examples
    selected: bool = False
    effect: float | None = None  # confirmation score of the chosen subset minus the subset without this rule
    effect_interval: list[float] | None = None  # 95% interval of `effect` (paired t)

    @property
    def verified(self) -> bool:
        """The rule passed verification (or was not verified at all)."""
        return self.verification is None or bool(self.verification.get("kept"))


@dataclass
class Verification(_Record):
    """A rule tried alone on training examples: the mistakes it came from and a sample the target got right."""

    checked_mistakes: list[int]
    checked_correct: list[int]
    fixed: list[int]
    broken: list[int]
    kept: bool

    def describe(self) -> str:
        return (f"fixed {len(self.fixed)} of {len(self.checked_mistakes)} source mistakes, broke "
                f"{len(self.broken)} of {len(self.checked_correct)} correct examples")


@dataclass
class Trial(_Record):
    """One evaluated rule subset."""

    number: int
    rule_ids: list[str]
    score: float | None
    state: str  # "complete", "pruned", "failed"
    n_examples: int = 0
    seconds: float = 0.0


@dataclass
class RoleUsage(_Record):
    """What one LM role cost: calls that reached the model (cache misses) and tokens."""

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # failed calls and examples by kind


@dataclass
class ConceptDistillationResult:
    """Everything a compile decided and measured. `to_dict/from_dict` are versioned.

    `baseline_score` and `best_score` are measured on the confirmation part of the valset, which the
    search never saw; `search_*` are the search's own (optimistic) figures, kept for diagnosis."""

    baseline_score: float | None = None
    best_score: float | None = None
    search_baseline_score: float | None = None
    search_best_score: float | None = None
    n_search: int = 0
    n_confirm: int = 0
    n_confirm_train: int = 0  # training examples in the decisive comparison (confirm_on_train)
    comparison: dict[str, Any] | None = None  # stats.Comparison of the returned program vs the baseline
    candidates: list[dict[str, Any]] = field(default_factory=list)  # confirmed subsets: ids, scores, p
    min_detectable_gain: float | None = None
    warnings: list[str] = field(default_factory=list)
    improved: bool = False
    message: str = ""
    selected_rule_ids: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    n_mistakes: int = 0
    n_mistakes_used: int = 0
    n_solved: int = 0  # sampled mistakes whose teacher solution the metric accepted (cd_dspy.phases.solve)
    train_score: float | None = None
    p_value: float | None = None
    stopped_early: str | None = None
    usage: dict[str, RoleUsage] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def selected_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.selected]

    @property
    def n_decided(self) -> int | None:
        """How many examples `baseline_score` and `best_score` were measured on (the decisive comparison, or the
        first candidate tested when none was accepted); None when no candidate was tested."""
        return self.comparison["n"] if self.comparison else (self.candidates or [{}])[0].get("n")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format_version": RESULT_FORMAT_VERSION,
            **{f.name: getattr(self, f.name) for f in fields(self)},
        }
        data["rules"] = [r.to_dict() for r in self.rules]
        data["trials"] = [t.to_dict() for t in self.trials]
        data["usage"] = {role: u.to_dict() for role, u in self.usage.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptDistillationResult:
        version = data.get("format_version")
        if version != RESULT_FORMAT_VERSION:
            raise ValueError(
                f"Result format version {version!r} is not supported (expected {RESULT_FORMAT_VERSION}); "
                "re-run the compile with this version of cd-dspy."
            )
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["rules"] = [Rule.from_dict(r) for r in data.get("rules", [])]
        kwargs["trials"] = [Trial.from_dict(t) for t in data.get("trials", [])]
        kwargs["usage"] = {role: RoleUsage.from_dict(u) for role, u in data.get("usage", {}).items()}
        return cls(**kwargs)
