"""The screen's power, and CD's end to end, in a noisy world like the 0.5B's (tests/noisy_world.py).

Any change of the prompt (a rule, a demonstration) redraws 15% of the target's answers, the placebo rate measured
on math-basic; one helpful concept (a rule with its exemplar) removes a blind spot on a quarter of the questions
(one problem kind of four, a harder case than the third the issue names); every other concept is noise. 24
training and 80 validation examples (40 to search, 40 to confirm: fewer than the 120 the issue names, since the
simulated generator has only 27 distinct "units" problems; less data is the harder case), 20 seeds, concepts
carrying both rules and exemplars. Measured: how often the screen drops the helpful concept (its false negatives)
and lets a noise concept through (its false positives), and how often the compile selects the helpful concept,
or adds anything when every concept is noise.
"""

from __future__ import annotations

import pytest
from noisy_world import HELPFUL_RULE, NOISE_RULES, noisy_compile

SEEDS = range(20)
WORLD = {"flip": 0.15, "n_train": 24, "n_val": 80, "carrier": "both"}


@pytest.fixture(scope="module")
def helpful_world():
    return [noisy_compile(seed, helpful=True, **WORLD)[0] for seed in SEEDS]


@pytest.fixture(scope="module")
def noise_world():
    return [noisy_compile(seed, helpful=False, **WORLD)[0] for seed in SEEDS]


def _helpful(result):
    return next((r for r in result.rules if r.text == HELPFUL_RULE), None)


def test_the_screen_lets_the_helpful_concept_through_and_says_how_often_noise_passes(helpful_world, noise_world):
    proposed = [c for c in map(_helpful, helpful_world) if c is not None]
    assert len(proposed) == len(SEEDS)  # the teacher proposes it in every seed (the world is built so)
    false_negatives = sum(not c.verified for c in proposed) / len(proposed)
    noise = [c for res in noise_world for c in res.rules if c.verification]  # exemplar-only ones go unscreened
    false_positives = sum(c.verified for c in noise) / len(noise)
    print(f"screen: false negatives {false_negatives:.0%} of {len(proposed)} helpful concepts, "
          f"false positives {false_positives:.0%} of {len(noise)} noise concepts")
    assert false_negatives <= 0.1
    assert false_positives <= 0.6  # a lenient screen: the confirmation, not the screen, refuses noise


def test_the_helpful_concept_is_selected_in_80_percent_of_seeds(helpful_world):
    selected = [res for res in helpful_world if (c := _helpful(res)) is not None and c.selected]
    assert len(selected) >= 0.8 * len(SEEDS), [res.message for res in helpful_world if res not in selected]
    for res in selected:  # what the program got was confirmed on examples the search never saw
        fresh = res.n_confirm + res.n_confirm_train  # the confirmation part and the fresh training examples
        assert res.n_confirm == 40 and res.comparison["n"] in (res.n_search + fresh, fresh)  # primary, or a pick
        assert res.comparison["difference"] > 0


def test_under_pure_noise_a_concept_is_added_in_at_most_5_percent_of_seeds(noise_world):
    added = [res for res in noise_world if res.selected_rule_ids]
    assert len(added) <= 0.05 * len(SEEDS), [res.message for res in added]
    assert all(c.text in NOISE_RULES or not c.text for res in noise_world for c in res.rules)
