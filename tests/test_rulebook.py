"""Rulebooks: export with provenance, import with pinned / free / dropped rules, clear errors for bad files."""

from __future__ import annotations

import dspy
import pytest
from migrate_world import raises_naming

from cd_dspy.phases.integrate import RULES_HEADER
from cd_dspy.phases.rulebook import DROPPED, FREE, PINNED, Rulebook, RulebookError, RulebookRule, export_rulebook
from cd_dspy.testing.simulated import HARMFUL_RULE, HELPFUL_RULES, NEUTRAL_RULE

COT = "question -> answer: float"


@pytest.fixture
def learned(sim):
    """A finished compile in the simulated world and its full rulebook (all rules, with statuses)."""
    sim.optimizer().compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    return sim, export_rulebook(sim.tmp_path / "run", sim.tmp_path / "book.yaml", all_rules=True)


def test_export_carries_statuses_and_provenance(learned):
    sim, book = learned
    status = {r.text: r.status for r in book.rules}
    assert all(status[text] == PINNED for text in HELPFUL_RULES.values())  # selected -> pinned
    assert status[HARMFUL_RULE] == DROPPED and status[NEUTRAL_RULE] == DROPPED  # failed verification
    vans = next(r for r in book.rules if r.text == HELPFUL_RULES["vans"])
    chain = vans.provenance
    assert chain["selected"] and chain["mistakes"] and chain["verification"]["fixed"]
    first = chain["mistakes"][0]
    assert "vans" in first["inputs"]["question"] and first["gold"]["answer"] != first["outputs"]["answer"]
    assert first["explanation"] == "The student mishandled a vans problem."
    low, high = chain["confirmation"]["interval"]
    assert low <= chain["confirmation"]["effect"] <= high
    # the default export holds the selected rules only, and the file reads back the same
    assert {r.text for r in export_rulebook(sim.tmp_path / "run").rules} == set(HELPFUL_RULES.values())
    again = Rulebook.load(sim.tmp_path / "book.yaml")
    assert [(r.text, r.predictor, r.status) for r in again.rules] == [(r.text, r.predictor, r.status)
                                                                       for r in book.rules]


def test_pinned_rules_are_always_on_and_dropped_rules_never_come_back(sim, tmp_path):
    book = Rulebook([RulebookRule(HELPFUL_RULES["vans"], "predict", PINNED),
                     RulebookRule(HARMFUL_RULE, "predict", DROPPED)])
    path = book.save(tmp_path / "book.yaml")
    program = dspy.ChainOfThought(COT)
    cd = sim.optimizer(rulebook=str(path), run_dir=tmp_path / "pinned")
    compiled = cd.compile(program, trainset=sim.trainset, valset=sim.valset)
    plain = sim.optimizer(run_dir=tmp_path / "plain")
    plain.compile(program, trainset=sim.trainset, valset=sim.valset)
    texts = {r.text for r in cd.result.rules}
    assert HARMFUL_RULE not in texts and HELPFUL_RULES["vans"] not in texts  # neither pinned nor dropped ones compete
    assert cd.result.n_mistakes < plain.result.n_mistakes  # mistakes were collected with the pinned rule on
    instructions = compiled.predict.signature.instructions
    assert HELPFUL_RULES["vans"] in instructions and instructions.count(RULES_HEADER) == 1
    assert program.predict.signature.instructions == dspy.ChainOfThought(COT).predict.signature.instructions


def test_free_rules_go_to_the_search_without_verification(sim, tmp_path):
    own = "When the question is about marbles, answer with the sum of the two numbers."
    book = Rulebook([RulebookRule(own, "predict", FREE), RulebookRule(HELPFUL_RULES["percent"], "predict", DROPPED)])
    cd = sim.optimizer(rulebook=book, run_dir=tmp_path / "free")
    compiled = cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    rules = {r.text: r for r in cd.result.rules}
    assert rules[own].origin == "rulebook" and rules[own].verification is None
    assert not rules[own].selected  # it changes nothing in this world, so the search leaves it out
    assert HELPFUL_RULES["percent"] not in rules
    assert HELPFUL_RULES["percent"] not in compiled.predict.signature.instructions
    assert rules[HELPFUL_RULES["vans"]].verification is not None  # the teacher's rules are still verified


@pytest.mark.parametrize("text, words", [
    ("rules:\n  - text: a\n   predictor: b\n", ["not valid YAML", "line 3"]),
    ("rules:\n  - text: When x, y.\n    predictor: predict\n    status: maybe\n",
     ["line 4, field `status`", "'maybe'", "pinned, free, dropped"]),
    ("rules:\n  - predictor: predict\n    status: free\n", ["field `text`", "missing or empty"]),
    ("format: other/2\nrules: []\n", ["format 'other/2' is not supported"]),
    ("- just a list\n", ["a mapping with a `rules:` list"]),
])
def test_bad_rulebooks_name_line_field_and_fix(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    raises_naming(RulebookError, lambda: Rulebook.load(path), words)


def test_a_rule_for_a_missing_predictor_is_an_error(sim, tmp_path):
    book = Rulebook([RulebookRule("When x, y.", "solve.predict", PINNED)], path="book.yaml")
    with pytest.raises(RulebookError, match=r"predictor 'solve.predict'.*\['predict'\].*`predictor` field"):
        sim.optimizer(rulebook=book).compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    with pytest.raises(RulebookError, match="does not exist"):
        Rulebook.load(tmp_path / "nope.yaml")
