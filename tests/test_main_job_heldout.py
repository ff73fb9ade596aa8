"""examples/main_job_heldout.py: the extra held-out problems are in none of the main job's splits."""

from __future__ import annotations

import pytest
from conftest import load_example

from cd_dspy.programs import get_task

heldout = load_example("main_job_heldout")


def test_the_extra_problems_are_new_to_the_main_job():
    task = get_task("math-basic")
    main = task.load_splits(seed=0, sizes=heldout.MAIN_JOB_SIZES, path=None)
    seen = {ex.question for split in main.values() for ex in split}
    fresh = heldout.fresh_problems(task, 48, seed=1)
    assert len(fresh) == 48 and len({ex.question for ex in fresh}) == 48
    assert not seen & {ex.question for ex in fresh}
    # the same seed gives the same problems (a rerun scores the same set)
    assert [ex.question for ex in heldout.fresh_problems(task, 48, seed=1)] == [ex.question for ex in fresh]


def test_asking_for_more_problems_than_exist_says_so():
    with pytest.raises((SystemExit, ValueError), match="ask for fewer"):
        heldout.fresh_problems(get_task("math-basic"), 2_000, seed=1)


def test_a_benchmark_replicate_stays_out_of_the_benchmark_splits():
    task = get_task("math-basic")
    sizes = heldout.parse_sizes("24,40,80")
    bench = task.load_splits(seed=0, sizes=sizes, path=None)
    seen = {ex.question for split in bench.values() for ex in split}
    fresh = heldout.fresh_problems(task, 80, seed=1, sizes=sizes)
    assert len(fresh) == 80 and not seen & {ex.question for ex in fresh}


def test_bad_arguments_name_the_expected_form():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="TRAIN,VAL,TEST"):
        heldout.parse_sizes("24,40")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        heldout.parse_named("bfs")
    assert heldout.parse_named("bfs=a/b=c.json") == ("bfs", "a/b=c.json")


def test_kind_counts_add_up_per_program():
    problems = heldout.fresh_problems(get_task("math-basic"), 12, seed=1)
    scores = {"before": [0.0] * 12, "after": [1.0] * 6 + [0.0] * 6}
    counts = heldout.kind_counts(problems, scores)
    assert sum(row["n"] for row in counts.values()) == 12
    assert sum(row["after"] for row in counts.values()) == 6 and all(row["before"] == 0 for row in counts.values())
    record = {"before_scores": [0.0], "after_scores": [1.0], "also": {"bfs": {"scores": [0.5]}}}
    assert heldout.recorded_scores(record) == {"before": [0.0], "after": [1.0], "bfs": [0.5]}


def test_also_names_that_would_overwrite_a_program_are_refused(capsys):
    with pytest.raises(SystemExit):
        heldout.main(["--load", "x.json", "--also", "after=y.json", "--out", "o.json"])
    assert "--also names must differ" in capsys.readouterr().err
