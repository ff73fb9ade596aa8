"""`--auto` decides the sizes of a compile on the command line; `compile` and `migrate` share one set of flags."""

from __future__ import annotations

import pytest

from cd_dspy import ConceptDistillation
from cd_dspy.cli.common import CD_FLAGS, cd_settings
from cd_dspy.cli.main import build_parser, main
from cd_dspy.config import AUTO_PRESETS

SIM = ["--task", "simulated", "--target", "simulated-target", "--teacher", "simulated-teacher"]
MIGRATE = ["migrate", "--task", "simulated", "--source", "simulated-teacher", "--target", "simulated-target"]


class Built(Exception):
    """Raised where the compile would start: the CLI has built its optimizer."""


@pytest.fixture
def built(monkeypatch, tmp_path):
    """Run `cd-dspy ARGV` up to the compile and return the `ConceptDistillation` it built (no LM is called)."""
    found: list[ConceptDistillation] = []

    def stop(self, student, **kwargs):
        found.append(self)
        raise Built

    monkeypatch.setattr(ConceptDistillation, "compile", stop)
    monkeypatch.chdir(tmp_path)  # a default run dir lands here

    def run(*argv: str) -> ConceptDistillation:
        with pytest.raises(Built):
            main(list(argv))
        return found[-1]

    return run


def sizes(cd: ConceptDistillation) -> tuple[int, int, int]:
    settings = cd.settings()  # what result.json records
    return settings["num_trials"], settings["max_mistakes"], settings["max_rules"]


def test_compile_auto_heavy_runs_the_heavy_preset(built):
    assert sizes(built("compile", *SIM, "--auto", "heavy")) == (48, 32, 12)
    heavy = AUTO_PRESETS["heavy"]
    assert (heavy.num_trials, heavy.max_mistakes) == (48, 32)


def test_explicit_sizes_override_the_preset(built):
    assert sizes(built("compile", *SIM, "--auto", "heavy", "--trials", "3")) == (3, 32, 12)
    assert sizes(built("compile", *SIM, "--auto", "medium", "--max-mistakes", "2", "--max-rules", "1")) == (24, 2, 1)


def test_migrate_auto_heavy_runs_the_heavy_preset(built, tmp_path):
    cd = built(*MIGRATE, "--auto", "heavy", "--test", "4", "--run-dir", str(tmp_path / "mig"))
    assert sizes(cd) == (48, 32, 12)


def test_the_main_job_runs_its_preset(built, monkeypatch):
    """Plain `cd-dspy compile` (only the models swapped for simulated ones, nothing loaded) runs `light`."""
    from cd_dspy.cli import main as cli

    real = cli.resolve_lm
    monkeypatch.setattr(cli, "resolve_lm", lambda spec, role, api_base=None: real(
        "simulated-target" if role == "target" else "simulated-teacher", role))
    cd = built("compile")
    light = AUTO_PRESETS["light"]
    assert cd.auto == "light" and sizes(cd) == (light.num_trials, light.max_mistakes, light.max_rules)


def test_compile_and_migrate_share_the_flags_and_their_defaults():
    parser = build_parser()
    compile_args = parser.parse_args(["compile"])
    migrate_args = parser.parse_args([*MIGRATE, "--run-dir", "x"])
    assert cd_settings(compile_args) == cd_settings(migrate_args)
    assert cd_settings(compile_args)["num_trials"] is None  # None: the --auto preset decides
    given = ["--auto", "medium", "--trials", "7", "--max-mistakes", "5", "--max-rules", "3", "--minibatch", "4",
             "--priming", "none", "--samples-per-mistake", "2", "--verify-correct", "3", "--confirm-fraction", "0.4",
             "--max-target-calls", "100", "--max-teacher-calls", "9", "--no-verify", "--conditional-rules",
             "--carrier", "both", "--rounds", "1"]
    assert {flag for flag, *_ in CD_FLAGS} - {"--rulebook"} <= set(given)  # every shared size and switch
    compiled = cd_settings(parser.parse_args(["compile", *given]))
    assert compiled == cd_settings(parser.parse_args([*MIGRATE, "--run-dir", "x", *given]))
    assert compiled["num_trials"] == 7 and compiled["verify"] is False and compiled["minibatch_size"] == 4
    assert compiled["carrier"] == "both" and compiled["rounds"] == 1


def test_an_unknown_preset_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compile", "--auto", "huge"])
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and all(name in err for name in AUTO_PRESETS)
