"""Rulebooks: a compile's rules as an editable YAML file with their provenance, and their import.

Each rule has a `status` the user may edit:

* `pinned` — always on: written into the program before the compile starts (the target's mistakes are
  collected with it, every subset the search tries holds it, the compiled program keeps it);
* `free` — a candidate the search may take or leave. It skips verification (its mistakes belong to the
  run that learned it) and goes straight to the search; the confirmation split still judges it;
* `dropped` — never used: the teacher proposing it again does not bring it back.

`export_rulebook(run_dir)` writes the selected rules of a compile as `pinned` (with `all_rules=True` the
others too: verified ones `free`, rejected ones `dropped`); `ConceptDistillation(..., rulebook=path)`
imports one; `cd_dspy.migration.transfer.check_rulebook` re-validates one on another target without a teacher.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from cd_dspy.core.result import ConceptDistillationResult, Rule
from cd_dspy.core.run_dir import write_file
from cd_dspy.phases.induce import EXPLANATIONS_LOG, rule_id
from cd_dspy.phases.integrate import with_rules

FORMAT = "cd-dspy-rulebook/1"
PINNED, FREE, DROPPED = "pinned", "free", "dropped"
STATUSES = (PINNED, FREE, DROPPED)
RULEBOOK_ORIGIN = "rulebook"
HEADER = """\
# cd-dspy rulebook. Edit `status` per rule: pinned (always on), free (the search decides), dropped (never
# used); edit `text` to reword a rule. `provenance` records where a rule came from and is not read back.
# Use it with ConceptDistillation(..., rulebook="this.yaml") or `cd-dspy migrate ... --rulebook this.yaml`;
# check it on another LM with `cd-dspy rulebook check this.yaml --task ... --lm ...`.
"""


class RulebookError(ValueError):
    """A rulebook that cannot be used as it is; the message names the file, line, field and fix."""


@dataclass
class RulebookRule:
    """One rule of a rulebook."""

    text: str
    predictor: str
    status: str = PINNED
    triggers: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_rule(self) -> Rule:
        return Rule(id=rule_id(self.predictor, self.text), text=self.text, predictor=self.predictor,
                    origin=RULEBOOK_ORIGIN, triggers=self.triggers)


@dataclass
class Rulebook:
    """Rules with a status each (pinned, free, dropped), and where they were learned."""

    rules: list[RulebookRule]
    learned: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def with_status(self, status: str) -> list[Rule]:
        return [r.to_rule() for r in self.rules if r.status == status]

    def applied(self) -> list[Rule]:
        """The rules a program takes when the rulebook is applied without a search: pinned and free."""
        return [r.to_rule() for r in self.rules if r.status != DROPPED]

    # -- import ------------------------------------------------------------------------------------
    def check_predictors(self, program: dspy.Module) -> None:
        """Raise if a rule names a predictor the program does not have."""
        names = [name for name, _ in program.named_predictors()]
        for number, rule in enumerate(self.rules, 1):
            if rule.status != DROPPED and rule.predictor not in names:
                raise RulebookError(f"{self.path or 'rulebook'}: rule {number} ({rule.text[:60]!r}) is for the "
                                    f"predictor {rule.predictor!r}, which this program lacks; its predictors are "
                                    f"{names}. Fix the rule's `predictor` field or set its status to dropped.")

    def pin(self, program: dspy.Module) -> dspy.Module:
        """A deep copy of `program` with the pinned rules in its instructions (the user's program is unchanged)."""
        self.check_predictors(program)
        return with_rules(program, self.with_status(PINNED))

    def merge(self, induced: list[Rule]) -> list[Rule]:
        """The candidate rules of a compile: the induced ones less those the rulebook pins or drops (and
        less free rules a previous run added), then the free rules, which go straight to the search."""
        taken = {_same(r.predictor, r.text) for r in self.rules if r.status in (PINNED, DROPPED)}
        kept = [r for r in induced if r.origin != RULEBOOK_ORIGIN and _same(r.predictor, r.text) not in taken]
        known = {_same(r.predictor, r.text) for r in kept}
        return kept + [r for r in self.with_status(FREE) if _same(r.predictor, r.text) not in known]

    # -- files -------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        import yaml

        data = {"format": FORMAT, "learned": self.learned, "rules": [
            {"text": r.text, "predictor": r.predictor, "status": r.status,
             **({"triggers": r.triggers} if r.triggers is not None else {}), "provenance": r.provenance}
            for r in self.rules]}
        return HEADER + yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False,
                                       allow_unicode=True, width=110)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the rulebook to `path`. An existing file is replaced only if cd-dspy wrote it (a run directory's
        manifest says so) or with `overwrite=True` (`--force`); else RunDirError (`cd_dspy.core.run_dir.write_file`)."""
        target = write_file(path, self.to_yaml(), overwrite=overwrite)
        self.path = str(target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rulebook:
        """Read and check a rulebook file (errors name the line, the field and the fix)."""
        source = Path(path)
        if not source.is_file():
            raise RulebookError(f"rulebook {source} does not exist; export one with `cd-dspy rulebook export RUN_DIR` "
                                "or cd_dspy.phases.rulebook.export_rulebook(run_dir).")
        return cls.loads(source.read_text(encoding="utf-8"), name=str(source))

    @classmethod
    def loads(cls, text: str, name: str = "rulebook") -> Rulebook:
        import yaml

        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise RulebookError(f"{name} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}. Fix "
                                "the indentation or quoting there (quote a rule text that holds ': ' or '#').") \
                from exc
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise RulebookError(f"{name}: a rulebook is a mapping with a `rules:` list (format {FORMAT}); "
                                "export one with `cd-dspy rulebook export RUN_DIR` to see the layout.")
        if data.get("format", FORMAT) != FORMAT:
            raise RulebookError(f"{name}: format {data['format']!r} is not supported; expected {FORMAT}.")
        nodes = _value_node(root, "rules").value
        rules = [_rule(entry, node, name) for entry, node in zip(data["rules"], nodes, strict=True)]
        return cls(rules=rules, learned=data.get("learned") or {}, path=name)


def _same(predictor: str, text: str) -> tuple[str, str]:
    return predictor, re.sub(r"\s+", " ", text.strip().lower())


def _value_node(mapping: Any, key: str) -> Any:
    return next(v for k, v in mapping.value if k.value == key)


def _rule(entry: Any, node: Any, name: str) -> RulebookRule:
    line = node.start_mark.line + 1
    if not isinstance(entry, dict):
        raise RulebookError(f"{name}, line {line}: each rule is a mapping with `text`, `predictor` and `status`, "
                            f"got {type(entry).__name__}.")

    def where(key: str) -> str:
        for k, v in node.value:
            if k.value == key:
                return f"{name}, line {v.start_mark.line + 1}, field `{key}`"
        return f"{name}, rule at line {line}: field `{key}`"

    for key in ("text", "predictor"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise RulebookError(f"{where(key)} is missing or empty; give the rule's {key} as text "
                                "(`predictor` is a name from program.named_predictors(), e.g. 'predict').")
    status = entry.get("status", PINNED)
    if status not in STATUSES:
        raise RulebookError(f"{where('status')} is {status!r}; use one of {', '.join(STATUSES)}.")
    triggers = entry.get("triggers")
    if triggers is not None and not (isinstance(triggers, list) and all(isinstance(t, str) for t in triggers)):
        raise RulebookError(f"{where('triggers')} must be a list of keyword stems (or left out).")
    provenance = entry.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise RulebookError(f"{where('provenance')} must be a mapping (or left out).")
    return RulebookRule(entry["text"].strip(), entry["predictor"].strip(), status, triggers, provenance)


def load_rulebook(rulebook: str | os.PathLike | Rulebook) -> Rulebook:
    """A `Rulebook` from a path (or the rulebook itself)."""
    if isinstance(rulebook, Rulebook):
        return rulebook
    if not isinstance(rulebook, str | os.PathLike):
        raise TypeError(f"rulebook must be a path to a YAML rulebook or a Rulebook, got {type(rulebook).__name__}.")
    return Rulebook.load(rulebook)


# -- provenance and export ---------------------------------------------------------------------------
def rule_provenance(result: ConceptDistillationResult, run_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Every rule of a compile with its chain: source mistakes (inputs, gold, outputs) and the teacher's
    explanations of them, the verification (training examples fixed and broken), the effect on the
    confirmation data with its interval, and whether it was selected."""
    mistakes, explanations = {}, {}
    run = Path(run_dir) if run_dir is not None else None
    if run is not None and (run / "mistakes.json").exists():
        mistakes = {m["id"]: m for m in json.loads((run / "mistakes.json").read_text())["mistakes"]}
    if run is not None and (run / EXPLANATIONS_LOG).exists():
        for line in (run / EXPLANATIONS_LOG).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("ok", True):
                explanations.setdefault(record["mistake_id"], record["explanation"])
    chains = []
    for rule in result.rules:
        sources = [{"id": s, **({k: mistakes[s].get(k) for k in ("inputs", "gold", "outputs")} if s in mistakes
                                else {}), "explanation": explanations.get(s)} for s in rule.sources]
        chains.append({"id": rule.id, "text": rule.text, "predictor": rule.predictor, "origin": rule.origin,
                       "triggers": rule.triggers, "mistakes": sources, "verification": rule.verification,
                       "verified": rule.verified, "selected": rule.selected, "effect": rule.effect,
                       "effect_interval": rule.effect_interval})
    return chains


def export_rulebook(run_dir: str | os.PathLike, path: str | os.PathLike | None = None, *,
                    result: ConceptDistillationResult | None = None, all_rules: bool = False,
                    learned: dict[str, Any] | None = None, overwrite: bool = False) -> Rulebook:
    """The rulebook of the compile in `run_dir`: its selected rules as `pinned` (with `all_rules`, also the
    other verified rules as `free` and the rejected ones as `dropped`); written to `path` when given (over an
    existing file only if cd-dspy wrote it, or with `overwrite=True`). A rulebook holds rule texts: a concept's
    worked exemplar stays in the compiled program's demos, and exemplar-only concepts are counted, not listed."""
    from cd_dspy.core.report import load_result

    result = result or load_result(run_dir)
    rules, exemplars = [], 0
    for chain in rule_provenance(result, run_dir):
        if not chain["text"]:  # an exemplar-only concept: demonstrations, no text to edit
            exemplars += 1
            continue
        status = PINNED if chain["selected"] else FREE if chain["verified"] else DROPPED
        if status != PINNED and not all_rules:
            continue
        provenance = {k: chain[k] for k in ("id", "origin", "selected", "mistakes", "verification")}
        provenance["confirmation"] = {"effect": chain["effect"], "interval": chain["effect_interval"]}
        rules.append(RulebookRule(chain["text"], chain["predictor"], status, chain["triggers"], provenance))
    info = {"run_dir": str(run_dir), "message": result.message, "n_train": result.n_train, "n_val": result.n_val,
            **({"exemplar_concepts_not_listed": exemplars} if exemplars else {}), **(learned or {})}
    book = Rulebook(rules=rules, learned=info)
    if path is not None:
        book.save(path, overwrite=overwrite)
    return book
