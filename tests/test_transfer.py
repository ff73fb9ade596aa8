"""Rulebook transfer checks (no teacher) and examples/transfer.py's matrix, on the simulated LMs."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from conftest import load_example
from migrate_world import COT, Migration

from cd_dspy.migration.transfer import check_rulebook
from cd_dspy.phases.rulebook import DROPPED, FREE, PINNED, Rulebook, RulebookRule
from cd_dspy.testing.simulated import HARMFUL_RULE, HELPFUL_RULES, answer_match


def helpful_book(tmp_path: Path) -> Path:
    rules = [RulebookRule(text, "predict", PINNED if kind != "units" else FREE) for kind, text in HELPFUL_RULES.items()]
    return Rulebook(rules + [RulebookRule(HARMFUL_RULE, "predict", DROPPED)],
                    learned={"target": "simulated/simulated-target"}).save(tmp_path / "helpful.yaml")


def test_a_rulebook_helps_the_model_it_was_learned_for(tmp_path):
    world = Migration(n_test=24)
    check = check_rulebook(dspy.ChainOfThought(COT), helpful_book(tmp_path), world.target, answer_match,
                           world.testset, run_dir=tmp_path / "records")
    assert check.rules == 3 and check.n == 24  # pinned and free rules applied, the dropped one not
    assert (check.without["score"], check.with_rules["score"]) == (25.0, 100.0)
    assert check.comparison["wins"] == 18 and check.comparison["losses"] == 0
    assert check.comparison["p_two_sided"] == pytest.approx(2 * 0.5 ** 18)
    assert "better with the rules" in check.describe() and check.learned_on == check.model


def test_on_a_model_that_needs_no_rules_the_check_finds_no_difference(tmp_path):
    world = Migration(n_test=24)
    check = check_rulebook(dspy.ChainOfThought(COT), helpful_book(tmp_path), world.source, answer_match,
                           world.testset)
    assert check.without["score"] == check.with_rules["score"] == 100.0  # the dropped harmful rule stayed out
    assert "not distinguishable" in check.describe()


def test_a_rulebook_with_nothing_to_apply_is_an_error(tmp_path):
    book = Rulebook([RulebookRule(HARMFUL_RULE, "predict", DROPPED)])
    world = Migration(n_test=4)
    with pytest.raises(ValueError, match="no pinned or free rule"):
        check_rulebook(dspy.ChainOfThought(COT), book, world.target, answer_match, world.testset)


def test_transfer_script_writes_the_matrix(tmp_path):
    script = load_example("transfer")
    harmful = Rulebook([RulebookRule(HARMFUL_RULE, "predict", PINNED)]).save(tmp_path / "harmful.yaml")
    books = [str(helpful_book(tmp_path)), str(harmful)]
    report = script.main(["--task", "simulated", "--train", "16", "--val", "40", "--test", "24", "--seed", "1",
                          "--rulebooks", *books, "--models", "simulated-target", "simulated-teacher",
                          "--run-dir", str(tmp_path / "records"), "--out", str(tmp_path / "out"), "--quiet"])
    cells = {(Path(c["rulebook"]).stem, c["model_name"]): c["comparison"] for c in report["cells"]}
    assert len(cells) == 4
    assert cells[("helpful", "simulated-target")]["p_two_sided"] < 0.05 < cells[("helpful", "simulated-target")][
        "difference"]
    assert cells[("helpful", "simulated-teacher")]["difference"] == 0.0
    assert cells[("harmful", "simulated-teacher")]["difference"] < 0  # it floors the fractional answers
    saved = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert saved["cells"] == report["cells"]
    table = (tmp_path / "out" / "transfer.md").read_text()
    assert "| rulebook (rules) | `simulated-target` | `simulated-teacher` |" in table and "(learned here)" in table


def test_transfer_script_skips_a_rulebook_with_nothing_to_apply_unless_asked(tmp_path):
    script = load_example("transfer")
    rejected = Rulebook([RulebookRule(HELPFUL_RULES["vans"], "predict", DROPPED)]).save(tmp_path / "rejected.yaml")
    base = ["--task", "simulated", "--train", "16", "--val", "40", "--test", "8", "--seed", "1", "--rulebooks",
            str(rejected), "--models", "simulated-target", "--run-dir", str(tmp_path / "rec"), "--quiet"]
    skipped = script.main([*base, "--out", str(tmp_path / "a")])
    assert skipped["cells"] == [{"rulebook": str(rejected), "model_name": "simulated-target",
                                 "skipped": "no pinned or free rule"}]
    assert "- (no pinned or free rule)" in (tmp_path / "a" / "transfer.md").read_text()
    applied = script.main([*base, "--include-dropped", "--out", str(tmp_path / "b")])
    assert applied["cells"][0]["rules"] == 1 and applied["cells"][0]["comparison"]["wins"] == 2  # the 2 vans problems
