"""Phase 4: write rules into the instructions of a deep copy of the program.

Always-on rules are written into each predictor's instructions in a stable, readable format, so a
saved program shows exactly what was added:

    <original instructions>

    Follow these rules:
    - <rule>

Conditional rules (`conditional=True`) are held by a `RulePredict`, a `dspy.Predict` that shows each
rule only to inputs meeting its condition (the "When ..." clause of the rule, matched by its
keywords: no LM call). `save()` keeps them in the predictor's state; `load_program` (or DSPy's
whole-program `save(..., save_program=True)` / `dspy.load`) restores them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from cd_dspy.core.keys import lm_without_secrets
from cd_dspy.core.result import ConceptDistillationResult, Rule, format_score
from cd_dspy.core.run_dir import write_file

if TYPE_CHECKING:
    from cd_dspy.phases.confirm import Decision
    from cd_dspy.phases.search import Selection

logger = logging.getLogger(__name__)
RECORD_KEY = "cd_dspy.result"  # the compile record's key in a saved program's JSON (next to the predictors' states)
RULES_HEADER = "Follow these rules:"
# Saved with conditional rules: DSPy's plain `Predict.load_state` refuses this output-configuration entry with
# an error that quotes it, so a plain `program.load` fails loudly instead of silently dropping the rules.
PLAIN_LOAD_GUARD = "conditional rules saved here: load this program with cd_dspy.load_program(program, path)"
_CONDITION = re.compile(r"^\s*(?:when|whenever|if)\s+(.+?),", re.I)
_GENERIC = frozenset("""a an the and or of to in on for with by from as at is are be it its this that these those
    you your they their there what which who how many much any each every some all when whenever if then than
    asked ask asks asking question questions problem problems task number numbers answer answers value values
    result results given find calculate compute give gives write use using need needs needed""".split())


def render_instructions(instructions: str, rules: Sequence[str]) -> str:
    if not rules:
        return instructions
    bullets = "\n".join(f"- {rule}" for rule in rules)
    if instructions.rstrip().rsplit("\n\n", 1)[-1].startswith(RULES_HEADER):  # rules already there (pinned)
        return f"{instructions.rstrip()}\n{bullets}"
    return f"{instructions.rstrip()}\n\n{RULES_HEADER}\n{bullets}"


def _stem(word: str) -> str:
    return word[:6]


def _stems(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z]+", text.lower())}


def triggers(rule_text: str, source_texts: Sequence[str] = ()) -> list[str]:
    """The keyword stems of a rule's "When ..." condition that its source questions contain (a word of
    the condition its own questions lack is a paraphrase that would never match); [] means always on:
    no condition, or none of its words in its sources."""
    match = _CONDITION.match(rule_text)
    if not match:
        return []
    words = re.findall(r"[a-z]+", match.group(1).lower())
    stems = {_stem(w) for w in words if len(w) > 2 and w not in _GENERIC}
    if source_texts:
        stems &= _stems(" ".join(source_texts))
    return sorted(stems)


def applies(rule: dict[str, Any], text: str) -> bool:
    """True when `text` holds at least half of the rule's trigger stems (always, when it has none)."""
    stems = rule.get("triggers") or []
    if not stems:
        return True
    present = _stems(text)
    return 2 * sum(s in present for s in stems) >= len(stems)


class RulePredict(dspy.Predict):
    """A `dspy.Predict` whose rules each speak only to the inputs that meet their condition."""

    def __init__(self, signature, conditional_rules: Sequence[dict[str, Any]] = (), **config):
        super().__init__(signature, **config)
        self.conditional_rules = list(conditional_rules)

    @classmethod
    def from_predict(cls, predict: dspy.Predict, rules: Sequence[Rule]) -> RulePredict:
        new = cls(predict.signature, [{"text": r.text, "triggers": triggers(r.text) if r.triggers is None
                                       else r.triggers} for r in rules], **predict.config)
        new.demos, new.lm, new.traces, new.train = list(predict.demos), predict.lm, predict.traces, predict.train
        return new

    def active_rules(self, inputs: dict[str, Any]) -> list[str]:
        text = " ".join(str(inputs.get(name, "")) for name in self.signature.input_fields)
        return [rule["text"] for rule in self.conditional_rules if applies(rule, text)]

    def _with_active(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "signature" in kwargs or not self.conditional_rules:
            return kwargs
        instructions = render_instructions(self.signature.instructions, self.active_rules(kwargs))
        return {**kwargs, "signature": self.signature.with_instructions(instructions)}

    def forward(self, **kwargs):
        return super().forward(**self._with_active(kwargs))

    async def aforward(self, **kwargs):
        return await super().aforward(**self._with_active(kwargs))

    def dump_state(self, json_mode=True):
        state = {**super().dump_state(json_mode), "conditional_rules": self.conditional_rules}
        if self.conditional_rules:  # a plain Predict's load_state rejects this entry, naming the fix
            state["fields"] = {**state.get("fields", {}), PLAIN_LOAD_GUARD: {}}
        return state

    def load_state(self, state: dict, **kwargs) -> RulePredict:
        fields = {k: v for k, v in state.get("fields", {}).items() if k != PLAIN_LOAD_GUARD}
        state = {k: v for k, v in state.items() if k != "fields"} | ({"fields": fields} if fields else {})
        return super().load_state(state, **kwargs)


def _replace(root: dspy.Module, name: str, new: dspy.Predict) -> dspy.Module:
    """Put `new` where `root.named_predictors()` found the predictor `name` ("self", "cot.predict",
    "steps[0]", "tools['x']"); return the root (`new` itself when the root is that predictor)."""
    if name == "self":
        return new
    *path, last = name.split(".")
    holder: Any = root
    for part in path:
        holder = _step(holder, part)
    attr, keys = _parts(last)
    if not keys:
        setattr(holder, attr, new)
        return root
    holder = getattr(holder, attr)
    for key in keys[:-1]:
        holder = holder[key]
    holder[keys[-1]] = new
    return root


def _parts(part: str) -> tuple[str, list[Any]]:
    match = re.fullmatch(r"(\w+)((?:\[[^\]]+\])*)", part)
    if match is None:
        raise ValueError(f"cannot place conditional rules on the predictor {part!r}: unsupported name.")
    keys = [int(k) if k.isdigit() else k.strip("'\"") for k in re.findall(r"\[([^\]]+)\]", match.group(2))]
    return match.group(1), keys


def _step(holder: Any, part: str) -> Any:
    attr, keys = _parts(part)
    holder = getattr(holder, attr)
    for key in keys:
        holder = holder[key]
    return holder


def with_rules(program: dspy.Module, rules: Sequence[Rule], lm: Any = None, conditional: bool = False) -> dspy.Module:
    """A deep copy of `program` whose predictors hold their rules and the rules' exemplars (appended to each
    predictor's demos), with `lm` (if given) bound to the predictors that have no LM of their own (a step that
    deliberately runs on another LM keeps it).

    Always-on rules go into the instructions through `signature.with_instructions` (signature classes
    are shared between copies: assigning `signature.instructions` would change the user's program);
    conditional ones into a `RulePredict` that replaces the predictor in the copy.
    """
    compiled = program.deepcopy()
    for name, pred in compiled.named_predictors():
        own = [r for r in rules if r.predictor == name and r.text]
        if own and conditional:
            pred = RulePredict.from_predict(pred, own)
            compiled = _replace(compiled, name, pred)
        elif own:
            texts = [r.text for r in own]
            pred.signature = pred.signature.with_instructions(render_instructions(pred.signature.instructions, texts))
        exemplars = [dspy.Example(**demo) for r in rules for demo in (r.exemplar or {}).get(name, [])]
        if exemplars:  # after the program's own demos (e.g. BootstrapFewShot's), which stay
            pred.demos = [*pred.demos, *exemplars]
        if lm is not None and pred.lm is None:
            pred.lm = lm
    return compiled


def load_program(program: dspy.Module, path: str | Path, **kwargs) -> dspy.Module:
    """`program.load(path)` that also restores conditional rules (a `RulePredict` where the saved
    state holds them) and the compile record (`program.detailed_results`, when `save_program` wrote one);
    returns the loaded program (a new object when `program` is itself a Predict)."""
    state = json.loads(Path(path).read_text())
    for name, pred in program.named_predictors():
        saved = (state if name == "self" else state.get(name, {})).get("conditional_rules")  # a Predict root: flat
        if saved and not isinstance(pred, RulePredict):
            program = _replace(program, name, RulePredict.from_predict(pred, []))
    program.load(str(path), **kwargs)
    if RECORD_KEY in state:
        try:
            program.detailed_results = ConceptDistillationResult.from_dict(state[RECORD_KEY])
        except (TypeError, ValueError, KeyError) as exc:  # a record of another version: the program still loads
            logger.warning("The compile record in %s could not be read (%s); the program is loaded without it.",
                           path, exc)
    return program


def save_program(compiled: dspy.Module, path: str | Path | None) -> None:
    """`compiled.save(path)` with the compile record (`detailed_results`) beside the predictors' states; an LM
    whose engine cannot be serialised is left out (with a warning), and no LM's secrets are written
    (`keys.lm_without_secrets`)."""
    if path is None:
        return
    compiled = compiled.deepcopy()
    for _, predictor in compiled.named_predictors():
        if predictor.lm is not None:
            predictor.lm = lm_without_secrets(predictor.lm)
    try:
        compiled.save(str(path))
    except Exception as exc:
        logger.warning("Could not save the compiled program with its LM (%s); saving without it.", exc)
        bare = compiled.deepcopy()
        bare.set_lm(None)
        bare.save(str(path))
    record = getattr(compiled, "detailed_results", None)
    if isinstance(record, ConceptDistillationResult):  # beside the predictors' states: `program.load` skips it
        state = json.loads(Path(path).read_text())
        write_file(path, json.dumps({**state, RECORD_KEY: record.to_dict()}, indent=2, default=str), overwrite=True)


def record_decision(result: ConceptDistillationResult, rules: list[Rule], selection: Selection,
                    decision: Decision) -> list[Rule]:
    """Write the search's trials and the confirmation's decision into `result` and each rule (selected,
    effect); return the selected rules, those the compiled program holds."""
    result.trials = selection.trials
    result.search_baseline_score, result.search_best_score = selection.baseline_score, selection.best_score
    result.baseline_score, result.best_score = decision.baseline_score, decision.chosen_score
    result.candidates = decision.candidates
    result.comparison = decision.comparison.to_dict() if decision.comparison else None
    result.p_value = decision.comparison.p_greater if decision.comparison else None
    for rule in rules:
        effect = decision.effects.get(rule.id)
        rule.selected = rule.id in decision.chosen
        rule.effect = effect.difference if effect else None
        rule.effect_interval = [effect.low, effect.high] if effect else None
    result.rules, result.selected_rule_ids = rules, list(decision.chosen)
    result.improved = bool(decision.chosen)
    result.n_confirm_train = decision.n_training
    n = f"{result.n_confirm}" + (f" (+{result.n_confirm_train} training)" if result.n_confirm_train else "")
    if decision.chosen:
        where = ("every validation example and the fresh training examples (the primary subset, fixed before "
                 "any score was seen)" if decision.candidates and decision.candidates[0].get("step") == "primary"
                 and decision.chosen == decision.candidates[0]["rule_ids"] else
                 f"{n} confirmation examples the search never saw")
        result.message = (f"{len(decision.chosen)} of {len(rules)} concepts selected; on {where}: "
                          f"{decision.comparison.describe()}.")
    else:
        tried = "; ".join(f"{c['rule_ids']} ({c.get('step', 'search')}, {c.get('n', n)} examples): "
                          f"{c['difference']:+.1f} points, p = {c['p_adjusted']:.3g} adjusted"
                          for c in decision.candidates) or "no subset beat the baseline on the search part"
        result.message = (f"No concept subset was confirmed (baseline {format_score(decision.baseline_score)}); "
                          f"candidates {tried}. Not distinguishable from the baseline, so the program is returned "
                          "unchanged.")
    return [r for r in rules if r.selected]
