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
