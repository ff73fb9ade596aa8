"""examples/prompt_sensitivity.py: placebo instructions on a deterministic and on a prompt-sensitive target."""

from __future__ import annotations

import json

import dspy
from conftest import load_example
from noisy_world import NoisyTarget

from cd_dspy.testing.simulated import answer_match, simulated_splits

sensitivity = load_example("prompt_sensitivity")


def test_placebos_move_nothing_on_a_target_that_reads_only_its_rules(tmp_path):
    report = sensitivity.main(["--task", "simulated", "--train", "24", "--val", "0", "--test", "0",
                               "--out", str(tmp_path)])
    assert report["n"] == 24 and not report["pending"] and len(report["placebos"]) == len(sensitivity.PLACEBOS)
    for row in report["placebos"]:
        assert row["moved"] == 0 and row["score"] == report["baseline"]["score"]
    saved = json.loads((tmp_path / "prompt_sensitivity.json").read_text())
    assert saved["placebos"] == report["placebos"]
    assert "0/24 (0%)" in (tmp_path / "prompt_sensitivity.md").read_text()


def test_placebos_move_answers_both_ways_on_a_prompt_sensitive_target():
    """NoisyTarget (flip=0.5) redraws half its answers under any other instructions: placebos fix and break
    some."""
    target = dspy.LM("simulated/noisy-target", engine=NoisyTarget(3, flip=0.5), cache=False)
    examples = simulated_splits(80, 0, seed=3)[0]
    report = sensitivity.measure(lambda: dspy.ChainOfThought("question -> answer: float"), examples, answer_match,
                                 target, sensitivity.PLACEBOS[:2])
    baseline = report["baseline"]["score"]
    for row in report["placebos"]:
        vs = row["vs_baseline"]
        assert vs["fixed"] > 0 and vs["broken"] > 0 and row["moved"] == vs["fixed"] + vs["broken"]
        assert row["score"] - baseline == vs["difference"] == 100 * (vs["fixed"] - vs["broken"]) / 80
        assert vs["broken"] <= row["baseline_right"] == round(baseline * 80 / 100)
        assert vs["p_two_sided"] > 0.01  # noise, not an effect


def test_cd_rules_row_totals_the_verification_of_a_run_dir(tmp_path):
    rules = [{"verification": {"checked_mistakes": [1], "fixed": [1], "checked_correct": [2, 3, 4], "broken": [3]}},
             {"verification": {"checked_mistakes": [5], "fixed": [], "checked_correct": [2, 3], "broken": [2, 3]}},
             {"verification": None}]
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    row = sensitivity.cd_rules_row(tmp_path)
    assert (row["rules"], row["mistakes_fixed"], row["mistakes_checked"]) == (2, 1, 2)
    assert (row["correct_broken"], row["correct_checked"]) == (3, 5)
    assert sensitivity.cd_rules_row(tmp_path / "missing") is None
