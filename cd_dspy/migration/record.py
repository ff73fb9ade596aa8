"""The record of a migration: `MigrationReport` (what `report.json` holds) and the names of its runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cd_dspy.migration import levers as lever_names
from cd_dspy.migration.levers import RUN_OF

RUNS = ("source", "target_before", "target_after")  # the runs of the CD comparison
LABELS = {"source": "source", "target_before": "target before CD", "target_after": "target after CD",
          **{RUN_OF[n]: lever_names.LABELS[n] for n in ("demos", "sft", "combined")}}


@dataclass
class MigrationReport:
    """What a migration found; `to_dict()` is what `report.json` holds, and what the renderers read."""

    run_dir: str
    models: dict[str, str]
    n_test: int
    scores: dict[str, dict[str, float]]  # run -> score, low, high (0-100)
    after_vs_before: dict[str, Any]  # stats.Comparison of target after vs target before
    after_vs_source: dict[str, Any]  # stats.Comparison of target after vs source
    gap_closed: dict[str, Any]  # stats.Ratio: (after - before) / (source - before)
    quality_kept: dict[str, Any]  # stats.Ratio: after / source
    flips: list[dict[str, Any]]  # per test example: status, inputs, gold, scores and outputs per run
    costs: dict[str, Any]  # costs.migration_costs
    rules: list[dict[str, Any]]  # rulebook.rule_provenance
    trials: list[dict[str, Any]]  # the Optuna study's trials
    compile: dict[str, Any]  # the compile's message, warnings, split sizes and confirmation scores
    verdict: str
    details: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    levers: list[dict[str, Any]] = field(default_factory=list)  # lever_table.lever_rows, one row per lever
    choice: dict[str, Any] = field(default_factory=dict)  # lever_table.choose: the chosen lever and its contenders

    def flip_counts(self, run: str = "target_after") -> dict[str, int]:
        """Flips from the target as is to `run` (default: target after CD)."""
        counts = dict.fromkeys(("fixed", "broken", "still wrong", "still right"), 0)
        for row in self.flips:
            status = row.get("statuses", {}).get(run, row.get("status") if run == "target_after" else None)
            if status:
                counts[status] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
