"""The CLI's console: no dump of an LM reply at the default log level, every warning once, failed runs counted."""

from __future__ import annotations

import logging

import dspy
import pytest

from cd_dspy.cli.main import main
from cd_dspy.testing import faults, simulated
from cd_dspy.testing.simulated import SimulatedTarget

SIM = ["--task", "simulated", "--target", "simulated-target", "--teacher", "simulated-teacher"]
RAMBLE = "RAMBLING-REPLY "
SMALL_VALSET = "no gain can be told from noise"


class RamblingTarget(SimulatedTarget):
    """The simulated target behind a `FaultyEngine`: a seeded half of its requests get a malformed reply."""

    def __init__(self) -> None:
        super().__init__()
        self.faulty = faults.FaultyEngine(SimulatedTarget(), rate=0.5, seed=0, kinds=("malformed",))

    def complete(self, request):
        return self.faulty.complete(request)


@pytest.fixture
def rambling_target(monkeypatch):
    """`simulated-target` answers a seeded half of its requests with pages of text no adapter can parse."""
    monkeypatch.setattr(faults, "MALFORMED_TEXT", RAMBLE * 400)
    monkeypatch.setattr(simulated, "SimulatedTarget", RamblingTarget)


def test_compile_console_is_quiet_and_says_each_warning_once(rambling_target, tmp_path, capfd):
    code = main(["compile", *SIM, "--train", "12", "--val", "8", "--test", "12", "--trials", "3",
                 "--run-dir", str(tmp_path / "run")])  # progress on, as the main job runs
    out, err = capfd.readouterr()
    assert code == 0
    assert RAMBLE not in out + err  # neither during the compile nor in the CLI's own held-out scoring
    assert (out + err).count(SMALL_VALSET) == 1 and f"warning: With 4 confirmation examples {SMALL_VALSET}" in out
    held_out = next(line for line in out.splitlines() if line.startswith("held-out failed runs (scored 0): "))
    assert " of 12 (example" in held_out and "rerun with -v" in held_out
    assert "failures (scored 0, retried on the next run): target failed_example" in out


def test_evaluate_counts_failed_runs_and_shows_replies_only_with_verbose(rambling_target, capfd):
    args = ["evaluate", "--task", "simulated", "--lm", "simulated-target", "--split", "test", "--n", "16"]
    assert main(args) == 0
    out, err = capfd.readouterr()
    assert RAMBLE not in out + err and "simulated test (16 examples) with simulated-target: " in out
    assert "failed runs (scored 0): test " in err and " of 16 (examples " in err
    assert main(["-v", *args]) == 0
    assert RAMBLE in capfd.readouterr().err  # where to find them: -v shows DSPy's error with the reply


def test_migrate_console_is_quiet_and_says_each_warning_once(rambling_target, tmp_path, capfd):
    code = main(["migrate", "--task", "simulated", "--source", "simulated-teacher", "--target", "simulated-target",
                 "--train", "12", "--val", "8", "--test", "8", "--trials", "3", "--run-dir", str(tmp_path / "mig")])
    out, err = capfd.readouterr()
    assert code == 0 and "Target after CD keeps" in out, err[-3000:]
    assert RAMBLE not in out + err
    assert (out + err).count(SMALL_VALSET) == 1 and SMALL_VALSET in out


def test_the_library_logs_the_warning_once_and_notes_it_nowhere_else(sim, caplog, capfd):
    """The Python API keeps its logging: one WARNING record, and no progress note repeating it."""
    program = dspy.ChainOfThought("question -> answer: float")
    with caplog.at_level(logging.WARNING, logger="cd_dspy"):
        sim.optimizer(num_trials=2, progress=True).compile(program, trainset=sim.trainset[:8], valset=sim.valset[:8])
    warned = [r for r in caplog.records if SMALL_VALSET in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert SMALL_VALSET not in capfd.readouterr().err


def test_a_warning_quoting_a_reply_stays_one_line_unless_verbose(capfd):
    """A cd-dspy warning that quotes an LM error (whose text holds the whole reply) is one line on the console."""
    from cd_dspy.cli.common import console_logging

    def warn() -> None:
        logging.getLogger("cd_dspy.phases.induce").warning("Teacher call failed (attempt 1 of 3): %s",
                                                    "Adapter ChatAdapter failed to parse the LM response.\n\n"
                                                    f"LM Response: {RAMBLE * 400}")

    with console_logging(verbose=False):
        warn()
    err = capfd.readouterr().err
    assert "Teacher call failed (attempt 1 of 3): Adapter ChatAdapter failed" in err and RAMBLE not in err
    assert err.count("\n") == 1 and "-v shows it whole" in err
    with console_logging(verbose=True):
        warn()
    assert RAMBLE * 400 in capfd.readouterr().err
