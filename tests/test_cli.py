"""The cd-dspy command on the simulated task (no model needed)."""

from __future__ import annotations

import json

import pytest

from cd_dspy.cli.main import main

SIM = ["--task", "simulated", "--target", "simulated-target", "--teacher", "simulated-teacher",
       "--carrier", "rules"]  # this world's helpful concepts are rules


@pytest.fixture
def compiled_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["compile", *SIM, "--train", "12", "--val", "40", "--test", "12", "--trials", "6",
                 "--run-dir", str(run_dir), "--quiet"])
    assert code == 0
    return run_dir, capsys.readouterr().out


def test_compile_prints_scores_and_writes_artifacts(compiled_run):
    run_dir, out = compiled_run
    assert "confirmation score (" in out and ": baseline" in out
    assert "search score (20 examples, the optimistic best of the search)" in out
    assert "held-out test (12 examples): before" in out and "95% CI" in out and "sign test p" in out
    assert "held-out verdict: a gain of +" in out
    scores = json.loads((run_dir / "test_scores.json").read_text())
    assert scores["after"] > scores["before"] and scores["n"] == 12
    assert scores["before_interval"][0] <= scores["before"] <= scores["before_interval"][1]
    assert scores["difference_interval"][0] <= scores["after"] - scores["before"] <= scores["difference_interval"][1]
    for name in ("program.json", "report.md", "result.json"):
        assert (run_dir / name).exists()


def test_small_valset_warning_is_printed(tmp_path, capsys):
    code = main(["compile", *SIM, "--train", "12", "--val", "8", "--test", "0", "--trials", "4",
                 "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "warning: With 4 confirmation examples no gain can be told from noise" in out
    # the search's picks would be tested on those 4; the primary subset is tested on all 8 and the fresh training
    assert "primary subset" in out or "Not distinguishable from the baseline" in out


def test_report_shows_rules_with_provenance(compiled_run, capsys):
    run_dir, _ = compiled_run
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "## Rules" in out and "selected" in out and "from m" in out and "## LM usage" in out


def test_evaluate_loads_the_saved_program(compiled_run, capsys):
    run_dir, _ = compiled_run
    args = ["evaluate", "--task", "simulated", "--lm", "simulated-target", "--split", "test"]
    assert main([*args, "--load", str(run_dir / "program.json")]) == 0
    after = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert main(args) == 0
    before = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert after > before


@pytest.mark.parametrize("argv, message", [
    (["compile", "--task", "nope"], "unknown task"),
    (["compile", *SIM[:2], "--target", "gpt4"], "unknown model"),
    (["compile", *SIM, "--program", "no_colon"], "package.module:attribute"),
    (["report", "/no/such/dir"], "not a run directory"),
    (["evaluate", "--task", "simulated", "--lm", "simulated-target", "--load", "/no/file.json"], "no saved program"),
])
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_per_example_scores_count_every_unparseable_reply_as_zero():
    """A tuned model that breaks the format on many examples scores 0 there; the evaluation is not cancelled
    (DSPy's default stops after 10 errors). Every example failing is an outage, an error (the failure model)."""
    import dspy

    from cd_dspy.core.failures import LMUnavailableError
    from cd_dspy.core.scoring import per_example_scores

    class Broken(dspy.Module):
        def __init__(self, working: str | None):
            super().__init__()
            self.working = working

        def forward(self, question):
            if question != self.working:
                raise ValueError("unparseable reply")
            return dspy.Prediction(answer=question)

    examples = [dspy.Example(question=str(i), answer=str(i)).with_inputs("question") for i in range(15)]
    assert per_example_scores(Broken("14"), examples, lambda e, p, t=None: 1.0, 1) == [0.0] * 14 + [1.0]
    with pytest.raises(LMUnavailableError, match="every one of 15 examples failed"):
        per_example_scores(Broken(None), examples, lambda e, p, t=None: 1.0, 1)

    class AdapterParseError(ValueError):  # named as DSPy's: a reply out of format (failures.KINDS)
        pass

    class Rambling(dspy.Module):  # answers, but never in the format: a poor model scored 0, not an outage
        def forward(self, question):
            raise AdapterParseError("no [[ ## answer ## ]] field in the reply")

    assert per_example_scores(Rambling(), examples, lambda e, p, t=None: 1.0, 1) == [0.0] * 15


def test_heldout_verdict_says_why_no_gain_is_shown():
    from cd_dspy.cli.main import heldout_verdict
    from cd_dspy.core.stats import paired_difference

    small = heldout_verdict(paired_difference([1, 1, 0, 0] + [1] * 12, [0, 0, 1, 0] + [1] * 12))  # 2 fixed, 1 broken
    assert "no change shown" in small and "On 16 paired examples" in small
    assert "at least 38 points (6 examples fixed and none broken)" in small and "--test" in small
    worse = heldout_verdict(paired_difference([0] * 8 + [1] * 8, [1] * 16))
    assert worse.startswith("held-out verdict: a loss of -50.0 points")
    # six fixed and none broken is the least that a two-sided sign test at 0.05 accepts, as the sentence says
    assert "a gain" in heldout_verdict(paired_difference([1] * 6 + [0] * 10, [0] * 16))
    assert "no change shown" in heldout_verdict(paired_difference([1] * 5 + [0] * 11, [0] * 16))
