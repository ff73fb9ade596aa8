"""Exemplars are searched as sets: in a noisy world where only two worked exemplars of the blind-spot kind together
fix it (one alone moves nothing but the noise), CD finds such a set; under pure noise it adds none.

The world of tests/test_screen.py (15% of answers redrawn by any prompt change, 24 training and 80 validation
examples, 20 seeds), with carrier "exemplars": the teacher's checked solutions of the target's mistakes.
"""

from __future__ import annotations

import random

import dspy
import optuna
import pytest
from noisy_world import BLIND_KIND, noisy_compile

from cd_dspy.config import grouped
from cd_dspy.core.result import Rule
from cd_dspy.core.stats import paired_difference
from cd_dspy.phases.confirm import fresh_training_examples
from cd_dspy.phases.search import RuleSelector, cost_units
from cd_dspy.testing.simulated import kind_of

SEEDS = range(20)
WORLD = {"flip": 0.15, "n_train": 24, "n_val": 80, "carrier": "exemplars", "set_size": 2}


def _blind_exemplars(result, ids) -> int:
    by_id = {r.id: r for r in result.rules}
    return sum(kind_of(demo["question"]) == BLIND_KIND for i in ids for demos in by_id[i].exemplar.values()
               for demo in demos)


@pytest.fixture(scope="module")
def set_world():
    return [noisy_compile(seed, helpful=True, **WORLD)[0] for seed in SEEDS]


@pytest.fixture(scope="module")
def noise_world():
    return [noisy_compile(seed, helpful=False, **WORLD)[0] for seed in SEEDS]


def test_a_set_of_exemplars_that_fixes_the_blind_spot_is_found_in_80_percent_of_seeds(set_world):
    found = [res for res in set_world if _blind_exemplars(res, res.selected_rule_ids) >= 2]
    print(f"\n[exemplar sets] a fixing set selected in {len(found)} of {len(SEEDS)} seeds")
    assert len(found) >= 0.8 * len(SEEDS), [res.message for res in set_world if res not in found]
    for res in set_world:
        assert all(r.verification is None for r in res.rules)  # exemplars are not screened one by one
        assert len(res.selected_rule_ids) <= 4  # max_exemplars
        fresh = res.n_confirm + res.n_confirm_train  # the confirmation part and the training examples never used
        if res.improved:  # the primary subset on every validation example and those, or a search pick on fresh ones
            assert res.comparison["n"] in (res.n_search + fresh, fresh) and res.n_confirm_train > 0
        assert res.candidates[0]["step"] == "primary"  # the fixed sequence starts with the pre-set subset


def test_under_pure_noise_no_exemplar_set_is_added_in_more_than_5_percent_of_seeds(noise_world):
    added = [res for res in noise_world if res.selected_rule_ids]
    assert len(added) <= 0.05 * len(SEEDS), [res.message for res in added]


def _concept(cid: str, text: str = "") -> Rule:
    return Rule(id=cid, text=text, predictor="p", exemplar=None if text else {"p": [{"question": cid}]})


def test_exemplar_only_concepts_are_charged_as_one_and_capped_without_lm_calls():
    concepts = [_concept("R1", "When ..., do ..."), *(_concept(f"E{i}") for i in range(6))]
    exemplars = frozenset(f"E{i}" for i in range(6))
    assert cost_units(["R1", "E0", "E1", "E2"], exemplars) == 2 and cost_units(["E0", "E1"], exemplars) == 1
    scored: list[tuple[str, ...]] = []

    def evaluator(program, indices):
        scored.append(tuple(program))
        return [1.0 if len(program) > 1 else 0.0 for _ in indices]

    selector = RuleSelector(lambda chosen: [r.id for r in chosen], concepts, evaluator, indices=range(10),
                            num_trials=12, seed=0, storage=None, study_name="caps", minibatch_size=None,
                            max_exemplars=3)
    selection = selector.run()
    assert all(sum(i in exemplars for i in ids) <= 3 for ids in scored)  # no over-cap subset was ever scored
    first = selector.study.trials[1]  # "all": the rule and the first three exemplars
    assert [i for i, on in first.params.items() if on] == ["R1", "E0", "E1", "E2"]
    pruned = [t for t in selector.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(sum(t.params[i] for i in exemplars) > 3 for t in pruned)
    assert selection.ranked[0][1] == 100.0


def test_fresh_training_examples_leave_out_what_the_screen_scored_and_what_the_tested_concepts_came_from():
    rule = _concept("R1", "When ..., do ...")
    rule.sources = ["m0", "m1"]
    rule.verification = {"checked_mistakes": [3], "checked_correct": [5, 6], "fixed": [], "broken": [], "kept": False}
    exemplars = [_concept("E0"), _concept("E1")]
    exemplars[0].sources, exemplars[1].sources = ["m0"], ["m9"]
    sampled = {"m0": 0, "m1": 1, "m9": 9}  # the mistakes the teacher saw
    concepts = [rule, *exemplars]
    # exemplars only: the mistakes their solutions solve are left out, the teacher's other mistakes count
    assert fresh_training_examples(10, sampled, concepts, exemplars) == [1, 2, 4, 7, 8]
    assert fresh_training_examples(10, sampled, concepts, exemplars[:1]) == [1, 2, 4, 7, 8, 9]
    # a written rule may draw on every mistake shown to the teacher: all of them are left out, as for no concept
    assert fresh_training_examples(10, sampled, concepts, [rule, exemplars[0]]) == [2, 4, 7, 8]
    assert fresh_training_examples(10, sampled, concepts, []) == [2, 4, 7, 8]


def test_max_exemplars_must_be_a_positive_int():
    from cd_dspy import ConceptDistillation

    with pytest.raises(ValueError, match="max_exemplars must be an int of at least 1"):
        ConceptDistillation(**grouped(metric=lambda *a: 1.0, teacher_lm=dspy.LM("openai/x"), max_exemplars=0))


def _decided(rng: random.Random, gain: float, exemplars_only: bool) -> bool:
    """One draw of the math-basic 24/40 sizes under the 15% redraw noise: the target answers a quarter of the
    training and about half of the validation examples right; a prompt change redraws 15% of its answers, and
    the tested exemplars fix each remaining mistake with probability `gain`. Is the primary subset accepted?"""
    def outcomes(n: int, accuracy: float) -> tuple[list[float], list[float]]:
        before = [float(rng.random() < accuracy) for _ in range(n)]
        after = [float(rng.random() < accuracy) if rng.random() < 0.15 else b for b in before]
        return before, [1.0 if a == 0 and rng.random() < gain else a for a in after]

    train_before, train_after = outcomes(24, 0.25)
    val_before, val_after = outcomes(40, 0.475)
    mistakes = [f"m{i}" for i, b in enumerate(train_before) if b == 0]
    sampled = {m: int(m[1:]) for m in rng.sample(mistakes, min(8, len(mistakes)))}
    tested = [Rule(id=f"E{m}", text="" if exemplars_only else "When ..., do ...", predictor="p", sources=[m],
                   exemplar={"p": [{"question": m}]}) for m in list(sampled)[:4]]
    fresh = fresh_training_examples(24, sampled, tested, tested)
    result = paired_difference(val_after + [train_after[i] for i in fresh],
                               val_before + [train_before[i] for i in fresh])
    return result.difference > 0 and result.p_greater < 0.05


def test_leaving_only_the_exemplars_own_mistakes_out_buys_power_and_keeps_noise_out():
    """Exemplars are tested on the teacher's other mistakes too (what rules may not be): under pure noise that
    accepts no more than 5% (fewer target mistakes than a random sample stay in), and with real help it accepts
    more often than leaving every mistake the teacher saw out."""
    rng = random.Random(0)
    runs = 1500
    noise = sum(_decided(rng, 0.0, exemplars_only=True) for _ in range(runs)) / runs
    power = {only: sum(_decided(rng, 0.3, exemplars_only=only) for _ in range(runs)) / runs for only in (True, False)}
    print(f"\n[fresh training] accepted under noise {noise:.3f}; with help {power[True]:.3f} (exemplars) "
          f"against {power[False]:.3f} (every seen mistake left out)")
    assert noise <= 0.05
    assert power[True] >= power[False] + 0.05
