"""On a valset too small to confirm what the search picks, CD skips the Optuna search and tests only the subset
fixed before any score: same guarantee under noise, no trials paid for.

The main job's sizes (12 training, 16 validation examples: 8 to confirm a search pick, where only gains of 75
points pass a Bonferroni test over 3 picks) in the noisy world of tests/test_exemplar_sets.py (15% of answers
redrawn by any prompt change; the blind spot yields to two worked exemplars of its kind together).
"""

from __future__ import annotations

import pytest
from noisy_world import NoisyTeacher, noisy_compile

from cd_dspy.core.failures import LMUnavailableError
from cd_dspy.phases.confirm import SEARCH_RESOLUTION_LIMIT, skipped_search_warning

SEEDS = range(20)
MAIN_JOB = {"flip": 0.15, "n_train": 12, "n_val": 16, "carrier": "exemplars", "set_size": 2, "max_mistakes": 8}


def test_the_search_runs_only_where_its_picks_could_pass():
    assert skipped_search_warning(16, 0.05, 3, 0.5) is not None  # 6 wins of 8 needed: 75 points
    text = skipped_search_warning(24, 0.05, 3, 0.5)  # 6 of 12: 50 points, still at the limit
    assert text is not None and "from 13 confirmation examples on (a valset of about 26" in text
    assert skipped_search_warning(26, 0.05, 3, 0.5) is None  # 6 of 13: 46 points < SEARCH_RESOLUTION_LIMIT
    assert SEARCH_RESOLUTION_LIMIT == 50.0
    assert skipped_search_warning(16, None, 3, 0.5) is None  # the point estimate decides: the search may matter


@pytest.fixture(scope="module")
def small_worlds():
    return {helpful: [noisy_compile(seed, helpful=helpful, **MAIN_JOB) for seed in SEEDS]
            for helpful in (True, False)}


def test_a_small_valset_skips_the_search_and_tests_the_primary_subset_on_everything(small_worlds):
    for result, engine in small_worlds[True] + small_worlds[False]:
        assert result.trials == [] and result.search_best_score is None  # no Optuna trial was run
        assert any("the Optuna search was skipped" in w for w in result.warnings), result.warnings
        assert [c["step"] for c in result.candidates] == ["primary"]  # nothing else was tested
        primary = result.candidates[0]
        assert primary["n"] == result.n_val + result.n_confirm_train  # every validation example + fresh training
        assert result.n_mistakes_used == min(4, result.n_mistakes)  # solved until the 4 exemplars tested passed
        # target calls: collect, then the baseline and the primary subset on those examples, nothing more
        assert engine.calls <= result.n_train + 2 * primary["n"], (engine.calls, primary["n"])


def test_skipping_keeps_noise_out_and_lets_the_blind_spot_set_through(small_worlds):
    added = [res for res, _ in small_worlds[False] if res.selected_rule_ids]
    found = [res for res, _ in small_worlds[True] if res.improved]
    print(f"\n[search skipped] under noise added in {len(added)} of {len(SEEDS)} seeds; with the blind spot "
          f"a set confirmed in {len(found)} of {len(SEEDS)}")
    assert len(added) <= 0.05 * len(SEEDS), [res.message for res in added]
    assert found


def test_the_skipped_search_decides_as_the_search_did_for_under_60_percent_of_the_calls(small_worlds, monkeypatch):
    """The search only ranks replacements for a primary subset that passed, so skipping it must leave whether the
    program changes as it was, seed by seed (solving only until 4 exemplars passed must not change the primary
    subset either); what it saves is target calls."""
    import cd_dspy.phases.confirm as confirm

    monkeypatch.setattr(confirm, "SEARCH_RESOLUTION_LIMIT", 1000.0)  # the search runs whatever the valset
    searched = {helpful: [noisy_compile(seed, helpful=helpful, **MAIN_JOB) for seed in SEEDS]
                for helpful in (True, False)}
    for helpful in (True, False):
        assert all(res.trials for res, _ in searched[helpful])  # the comparison did run the search
        assert [res.improved for res, _ in small_worlds[helpful]] == [res.improved for res, _ in searched[helpful]]
        primaries = [[res.candidates[0]["rule_ids"] for res, _ in runs[helpful]] for runs in (small_worlds, searched)]
        assert primaries[0] == primaries[1]  # the same subset fixed in advance
        skipped_calls = sum(engine.calls for _, engine in small_worlds[helpful])
        searched_calls = sum(engine.calls for _, engine in searched[helpful])
        print(f"\n[search skipped] {'blind spot' if helpful else 'pure noise'}: target calls {skipped_calls} "
              f"skipped, {searched_calls} with the search")
        assert skipped_calls < 0.6 * searched_calls


class FlakyTeacher(NoisyTeacher):
    """A NoisyTeacher whose solving calls number `failing` (1-based) raise: ordinary failed calls, no outage."""

    def __init__(self, seed: int, failing: set[int]):
        super().__init__(seed)
        self.failing, self.solves = failing, 0

    def respond(self, instructions, inputs, outputs):
        if "question" in inputs and "answer" in outputs:
            self.solves += 1
            if self.solves in self.failing:
                raise ValueError(f"reply {self.solves} could not be parsed")
        return super().respond(instructions, inputs, outputs)


def test_a_failed_solution_in_a_batch_of_one_is_no_outage():
    """Solving until 4 exemplars passed goes in batches of what is missing: the 4th call fails, so the next batch is
    one mistake, and its call fails too. Neither is an outage; the teacher solves a sixth and the compile goes on.
    Every call failing still is one, over all the batches."""
    world = {**MAIN_JOB, "n_train": 24}  # mistakes to spare
    teacher = FlakyTeacher(0, failing={4, 5})
    result, _ = noisy_compile(0, helpful=False, teacher_engine=teacher, **world)
    assert result.n_mistakes >= 6
    assert (teacher.solves, result.n_mistakes_used, result.n_solved) == (6, 6, 4)
    with pytest.raises(LMUnavailableError, match="every one of the 8 solutions failed"):  # every call: an outage
        noisy_compile(0, helpful=False, teacher_engine=FlakyTeacher(0, failing=set(range(1, 100))), **world)


def test_the_dry_run_counts_no_search_on_a_small_valset(sim):
    small = sim.optimizer(carrier="exemplars").dry_run(_program(), sim.trainset, sim.valset[:16])
    large = sim.optimizer(carrier="exemplars").dry_run(_program(), sim.trainset, sim.valset)
    assert small["search_calls"] == 0 and small["confirm_calls"] == 2 * (16 + len(sim.trainset) - 4)
    assert large["search_calls"] > 0


def _program():
    import dspy

    return dspy.ChainOfThought("question -> answer: float")


def test_the_report_and_run_dir_show_the_skipped_search(tmp_path):
    from cd_dspy.core.report import render_report

    result, _ = noisy_compile(0, helpful=True, run_dir=tmp_path / "run", **MAIN_JOB)
    assert result.trials == [] and not (tmp_path / "run" / "study.db").exists()  # no Optuna study was opened
    text = render_report(tmp_path / "run")
    assert "| search | skipped | - |" in text and "None: the search did not run" in text
    assert "So the Optuna search was skipped" in text
    assert f"{result.n_mistakes_used} given to the teacher, {result.n_solved} of them solved" in text
