"""`cd_dspy.migrate` end to end in the simulated world: the report, resume, failures, bad inputs, the CLI."""

from __future__ import annotations

import json
import re

import dspy
import pytest
from migrate_world import COT, PRICES, Migration, raises_naming

from cd_dspy.core.heldout import HELDOUT_LOG, HeldOutRunner
from cd_dspy.core.run_dir import RunDir
from cd_dspy.testing.simulated import HARMFUL_RULE, HELPFUL_RULES, SimulatedTarget, answer_match


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("migration")
    world = Migration()
    return world, world.run(run_dir, prices=PRICES), run_dir


def test_scores_tests_and_verdict(migrated):
    _, report, _ = migrated
    scores = {run: s["score"] for run, s in report.scores.items()}
    assert scores == {"source": 100.0, "target_before": 25.0, "target_after": 100.0}
    assert report.after_vs_before["wins"] == 30 and report.after_vs_before["losses"] == 0
    assert report.after_vs_before["p_two_sided"] == pytest.approx(2 * 0.5 ** 30)  # McNemar exact, 30 vs 0
    assert report.after_vs_source["p_two_sided"] == 1.0
    assert report.gap_closed["estimate"] == pytest.approx(1.0) and report.quality_kept["estimate"] == 1.0
    assert report.flip_counts() == {"fixed": 30, "broken": 0, "still wrong": 0, "still right": 10}
    fixed = next(row for row in report.flips if row["status"] == "fixed")
    assert fixed["inputs"]["question"] and fixed["outputs"]["target_before"]["answer"] != fixed["gold"]["answer"]
    verdict = report.verdict  # CD alone (the simulated world's default): the lever verdict names it
    assert verdict.startswith("CD keeps 100% [95% CI 100%, 100%] of source quality (100.0 [95% CI 91.2, 100.0]")
    assert "not distinguishable from the source, McNemar exact p = 1" in verdict
    assert "better than the target as is by +75.0 points" in verdict
    assert re.search(r"at \d+% of the source's cost per request \(\$[\d.e-]+ vs \$[\d.e-]+\); break-even after "
                     r"[\d,]+ requests", verdict)
    cd_line = next(line for line in report.details if line.startswith("Target after CD keeps"))
    assert re.search(r"at \d+% of its cost per request \(\$[\d.e-]+ vs \$[\d.e-]+\); break-even after [\d,]+ "
                     r"requests", cd_line)
    assert any("better than the target before CD" in line for line in report.details)
    assert [row["name"] for row in report.levers] == ["target", "cd"] and report.choice["chosen"] == "cd"


def test_costs_are_priced_from_the_table_and_break_even_follows(migrated):
    _, report, _ = migrated
    c = report.costs
    assert c["unit"] == "usd" and c["prices"]["target"]["source"] == "price table"
    source, after = c["runs"]["source"], c["runs"]["target_after"]
    assert source["usd_per_request"] == pytest.approx(
        (source["prompt_tokens"] * 10 + source["completion_tokens"] * 30) / 1e6 / source["n"])
    assert after["calls"] == 40 and after["median_call_seconds"] is not None
    saved = c["per_request"]["source"] - c["per_request"]["target_after"]
    assert c["break_even"] == -(-round(c["compile"]["total"] / saved, 9) // 1)
    assert c["compile"]["teacher"]["calls"] > 0 and c["compile"]["target"]["calls"] > 0


def test_rules_carry_their_provenance(migrated):
    _, report, run_dir = migrated
    rules = {r["text"]: r for r in report.rules}
    for text in HELPFUL_RULES.values():
        rule = rules[text]
        assert rule["selected"] and rule["verification"]["fixed"] and rule["mistakes"][0]["explanation"]
        assert rule["effect_interval"][0] <= rule["effect"] <= rule["effect_interval"][1]
    assert not rules[HARMFUL_RULE]["selected"] and not rules[HARMFUL_RULE]["verified"]
    book = (run_dir / "rulebook.yaml").read_text()
    assert "status: pinned" in book and "status: dropped" in book and "explanation:" in book


def test_report_files_hold_the_same_content(migrated):
    _, report, run_dir = migrated
    markdown, page = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    for text in (report.verdict, "## Flips", "## Cost and latency", "## Rules and their provenance"):
        assert text.replace("→", "→") in markdown
    assert report.verdict.split(" (")[0] in page
    for name in ("scores", "search", "rules"):
        assert f"](plots/{name}.png)" in markdown and (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
        assert f'<figure id="plot-{name}"' in page
    assert page.count("<svg") == 3 and "<details>" in page and "<script" not in page
    assert not re.search(r"""(src|href)=["']?https?:""", page)  # nothing to fetch
    data = json.loads((run_dir / "report.json").read_text())
    assert data["verdict"] == report.verdict and len(data["flips"]) == 40


def test_a_rerun_repeats_no_call(migrated):
    world, report, run_dir = migrated
    again = Migration()
    second = again.run(run_dir, prices=PRICES)
    assert again.target_engine.calls == 0 and again.source_engine.calls == 0
    assert second.scores == report.scores and second.after_vs_before == report.after_vs_before
    assert second.costs["compile"] == report.costs["compile"]  # the compile's calls, confirmation's included


def test_failed_examples_are_not_stored_as_finished(tmp_path):
    class Flaky(SimulatedTarget):
        """Fails every 'vans' question while `broken` is set."""

        broken = True

        def respond(self, instructions, inputs, outputs):
            if self.broken and "vans" in inputs.get("question", ""):
                raise TimeoutError("the server timed out")
            return super().respond(instructions, inputs, outputs)

    world = Migration(n_test=8)
    engine = Flaky()
    program = dspy.ChainOfThought(COT)
    program.set_lm(dspy.LM("simulated/flaky", engine=engine, cache=False, num_retries=0))
    runner = HeldOutRunner(world.testset, answer_match, run_dir=RunDir(tmp_path))
    records = runner.run(program, "flaky")
    failed = [r.index for r in records if r.failed]
    assert failed == [3, 7] and all(records[i].score == 0.0 for i in failed)
    assert sorted(r["index"] for r in RunDir(tmp_path).read_jsonl(HELDOUT_LOG)) == [0, 1, 2, 4, 5, 6]
    engine.broken, calls = False, engine.calls
    again = HeldOutRunner(world.testset, answer_match, run_dir=RunDir(tmp_path)).run(program, "flaky")
    assert engine.calls - calls == 2 and not any(r.failed for r in again)  # only the two failed ones rerun


def test_costs_in_seconds_when_no_price_is_known(tmp_path):
    report = Migration(n_test=8).run(tmp_path / "run", num_trials=8)
    assert report.costs["unit"] == "seconds"
    assert "no price known for simulated/simulated-target, simulated/simulated-teacher" in report.verdict
    assert "seconds of LM time per request" in report.verdict


@pytest.mark.parametrize("change, words", [
    (lambda w: {"target_lm": w.source}, ["same LM", "target_lm"]),
    (lambda w: {"target_lm": dspy.LM("simulated/simulated-teacher", engine=SimulatedTarget(), cache=False)},
     ["same LM"]),
    (lambda w: {"testset": []}, ["testset is empty", "disjoint"]),
    (lambda w: {"testset": w.testset + w.trainset[:3]}, ["3 of 11 testset examples", "disjoint splits"]),
    (lambda w: {"testset": w.testset[:4] + w.valset[:1]}, ["1 of 5 testset examples"]),
    (lambda w: {"run_dir": None}, ["needs a run_dir"]),
    (lambda w: {"source_lm": "gpt-4o"}, ["source_lm must be a dspy.LM"]),
])
def test_bad_inputs_are_clear_errors(tmp_path, change, words):
    world = Migration(n_test=8)
    from cd_dspy.migration.api import migrate
    from cd_dspy.testing.simulated import answer_match as metric

    kwargs = {"source_lm": world.source, "target_lm": world.target, "metric": metric, "trainset": world.trainset,
              "valset": world.valset, "testset": world.testset, "run_dir": tmp_path / "run", "progress": False}
    kwargs.update(change(world))
    raises_naming((ValueError, TypeError), lambda: migrate(dspy.ChainOfThought(COT), **kwargs), words)
    assert world.target_engine.calls == 0 and world.source_engine.calls == 0  # refused before any call


def test_cli_migrate_and_rulebooks(tmp_path, capsys):
    from cd_dspy.cli.main import main

    sim = ["--task", "simulated", "--train", "16", "--val", "40", "--seed", "1"]
    run_dir = tmp_path / "mig"
    code = main(["migrate", *sim, "--source", "simulated-teacher", "--target", "simulated-target", "--test", "12",
                 "--carrier", "rules", "--trials", "16", "--run-dir", str(run_dir), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "Target after CD keeps" in out and "no price known" in out
    assert (run_dir / "report.html").exists() and (run_dir / "report.md").exists()
    selected = sum(r["selected"] for r in json.loads((run_dir / "report.json").read_text())["rules"])
    assert selected >= 2
    assert main(["rulebook", "export", str(run_dir), "-o", str(tmp_path / "book.yaml")]) == 0
    assert f"{selected} pinned, 0 free, 0 dropped" in capsys.readouterr().out
    assert main(["rulebook", "check", str(tmp_path / "book.yaml"), *sim, "--test", "12", "--lm",
                 "simulated-target", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{selected} rules of" in out and "better with the rules" in out
    assert main(["migrate", *sim, "--source", "simulated-target", "--target", "simulated-target", "--run-dir",
                 str(tmp_path / "x")]) == 2
    assert "name the cheaper model as --target" in capsys.readouterr().err


def test_a_compile_that_keeps_no_rule_says_the_program_is_unchanged(tmp_path):
    """Every rule the teacher knows is dropped by the rulebook: target after CD is target before by construction,
    and the verdict says so instead of presenting a [0, 0] interval as a measured effect."""
    from cd_dspy.phases.rulebook import DROPPED, Rulebook, RulebookRule

    book = Rulebook([RulebookRule(text, "predict", DROPPED) for text in [*HELPFUL_RULES.values(), HARMFUL_RULE]])
    report = Migration(n_test=8).run(tmp_path / "run", num_trials=4, rulebook=str(book.save(tmp_path / "book.yaml")))
    assert report.scores["target_after"] == report.scores["target_before"]
    assert re.match(r"CD kept no rule \(\d+ proposed, 0 passed verification, none kept", report.verdict)
    assert "program is unchanged" in report.verdict and "No lever is distinguishable from the target as is" in \
        report.verdict
    assert any("same answers by construction" in line for line in report.details)


def test_the_cli_runs_the_source_with_the_targets_settings_and_teaches_with_the_teachers(monkeypatch):
    """An embedded source answers the program with the target-role max_tokens (equal terms with the target); the
    teacher is the same model with the teacher-role settings; where the role changes nothing, one object serves."""
    import argparse

    from cd_dspy.cli import migrate as cli_migrate

    def fake_resolve(spec, role, api_base=None):
        tokens = 1024 if role == "teacher" and spec.startswith("local") else 512
        return dspy.LM(spec, max_tokens=tokens, cache=False)

    monkeypatch.setattr(cli_migrate, "resolve_lm", fake_resolve)
    names = {"teacher": None, "source_api_base": None, "target_api_base": None, "teacher_api_base": None}
    source, target, teacher = cli_migrate._lms(argparse.Namespace(source="local/big", target="local/small", **names))
    assert source.kwargs["max_tokens"] == target.kwargs["max_tokens"] == 512 and teacher.kwargs["max_tokens"] == 1024
    assert teacher is not source and teacher.model == source.model
    source, _, teacher = cli_migrate._lms(argparse.Namespace(source="openai/gpt-4o", target="local/small", **names))
    assert teacher is source
