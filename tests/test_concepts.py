"""Solutions before explanations, concepts as rules and/or worked exemplars (phases.solve, phases.concepts).

The simulated target fixes a blind spot when its rule is in the instructions or, for "percent" and "vans"
problems, when a worked demonstration of the same kind is in its prompt; "units" problems yield to their rule only.
"""

from __future__ import annotations

import json

import dspy
import pytest

from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.core.result import Mistake, Rule, Solution
from cd_dspy.phases.concepts import EXEMPLAR_ORIGIN, build_concepts, concept_id, screen_examples
from cd_dspy.phases.integrate import with_rules
from cd_dspy.phases.solve import exemplar_demos, quotes_given_answer, solve_mistakes
from cd_dspy.testing.simulated import HELPFUL_RULES, SimulatedTeacher, kind_of

COT = "question -> answer: float"


def _mistakes(sim, n: int = 8) -> list[Mistake]:
    return [Mistake(id=f"m{i}", example_index=i, inputs=dict(e.inputs()), gold={"answer": e.answer},
                    outputs={"answer": -1.0}, score=0.0, feedback=None, steps=[])
            for i, e in enumerate(sim.trainset[:n])]


class QuotingTeacher(SimulatedTeacher):
    """Solves every problem, but under a priming that shows the answer it says it was given it."""

    def respond(self, instructions, inputs, outputs):
        reply = super().respond(instructions, inputs, outputs)
        if "question" in inputs and "You are given the correct answer" in instructions:
            reply["reasoning"] = "The given answer is right, so I write it."
        return reply


def test_only_solutions_the_metric_accepts_are_kept_and_quoting_the_given_answer_is_refused(sim):
    program = dspy.ChainOfThought(COT)
    wrong_on_vans = lambda e, p, trace=None: kind_of(e.question) != "vans" and abs(float(p.answer) - e.answer) < 1e-6  # noqa: E731
    with dspy.context(adapter=dspy.ChatAdapter()):
        solutions = solve_mistakes(program, _mistakes(sim), sim.trainset, teacher_lm=sim.teacher,
                                   metric=ScoredMetric(wrong_on_vans), priming="gold", threshold=1.0)
    for solution, example in zip(solutions, sim.trainset, strict=False):
        assert solution.ok == (kind_of(example.question) != "vans")
        assert [t["priming"] for t in solution.tried] == (["gold"] if solution.ok else ["gold", "none"])
    assert all(s.steps and s.steps[0]["predictor"] == "predict" for s in solutions if s.ok)
    quoting = dspy.LM("simulated/quoting", engine=QuotingTeacher(), cache=False)
    with dspy.context(adapter=dspy.ChatAdapter()):
        solutions = solve_mistakes(program, _mistakes(sim, 2), sim.trainset, teacher_lm=quoting,
                                   metric=ScoredMetric(sim.metric), priming="gold", threshold=1.0)
    for solution in solutions:  # the gold-primed reply quoted its answer: the unprimed one is kept instead
        assert solution.ok and solution.priming == "none" and solution.tried[0]["quoted_given_answer"]
        assert not quotes_given_answer([("predict", None, {}, solution.steps[0]["outputs"])])


def _solution(mistake_id: str, question: str, answer: float) -> Solution:
    step = {"predictor": "predict", "inputs": {"question": question},
            "outputs": {"reasoning": "Worked out.", "answer": answer}}
    return Solution(mistake_id, ok=True, score=1.0, steps=[step], priming="gold")


def test_concepts_for_each_carrier_and_their_ids():
    rule = Rule(id=concept_id("predict", "When X, do Y."), text="When X, do Y.", predictor="predict",
                sources=["m1", "m2"])
    solutions = [_solution("m1", "q1", 1.0), _solution("m3", "q3", 3.0),
                 Solution("m4", ok=False, score=0.0, steps=[], priming="gold")]
    assert build_concepts("rules", [rule], solutions) == [rule]
    exemplars = build_concepts("exemplars", [rule], solutions)
    assert [c.sources for c in exemplars] == [["m1"], ["m3"]] and all(not c.text for c in exemplars)
    assert all(c.origin == EXEMPLAR_ORIGIN and c.id.startswith("E") for c in exemplars)
    both = build_concepts("both", [rule], solutions)
    assert [c.text for c in both] == ["When X, do Y.", ""]  # m1's exemplar rides with its rule; m3 alone
    assert both[0].exemplar == exemplar_demos(solutions[0]) and both[0].id.startswith("C")
    assert both[0].id != rule.id and concept_id("predict", "When X, do Y.") == rule.id  # content decides the id
    with pytest.raises(ValueError, match="carrier must be one of"):
        build_concepts("weights", [rule], solutions)


def test_a_concept_is_never_screened_on_the_mistake_its_exemplar_shows(sim):
    mistakes = _mistakes(sim)
    concepts = build_concepts("both", [], [_solution("m1", mistakes[1].inputs["question"], 1.0)])
    checks = screen_examples(concepts, mistakes, max_mistakes=3)[concepts[0].id]
    assert 1 not in checks and len(checks) == 3
    kind = kind_of(mistakes[1].inputs["question"])
    same_kind = [m.example_index for m in mistakes if kind_of(m.inputs["question"]) == kind]
    assert checks[0] in same_kind  # the most alike mistakes first


def test_exemplars_go_after_the_programs_own_demos_and_survive_save_and_load(sim, tmp_path):
    program = dspy.ChainOfThought(COT)
    own = dspy.Example(question="Q0", reasoning="R0", answer=0.0, augmented=True)
    program.predict.demos = [own]
    concept = build_concepts("exemplars", [], [_solution("m1", "A coat costs 90 dollars.", 63.0)])[0]
    compiled = with_rules(program, [concept])
    assert [d["question"] for d in compiled.predict.demos] == ["Q0", "A coat costs 90 dollars."]
    assert program.predict.demos == [own]  # the user's program is untouched
    compiled.save(str(tmp_path / "p.json"))
    loaded = dspy.ChainOfThought(COT)
    loaded.load(str(tmp_path / "p.json"))
    assert [d["question"] for d in loaded.predict.demos] == ["Q0", "A coat costs 90 dollars."]


@pytest.mark.parametrize("carrier", ["rules", "exemplars", "both"])
def test_each_carrier_compiles_end_to_end_and_confirms_its_gain(sim, carrier):
    cd = sim.optimizer(carrier=carrier, run_dir=sim.tmp_path / carrier)
    with dspy.context(adapter=dspy.ChatAdapter()):
        compiled = cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    result = cd.result
    assert result.improved and result.n_solved == result.n_mistakes_used > 0
    demos, instructions = compiled.predict.demos, compiled.predict.signature.instructions
    chosen = result.selected_rules
    assert bool(demos) == (carrier != "rules") and len(demos) == sum(len(c.exemplar or {}) for c in chosen)
    assert any(r in instructions for r in HELPFUL_RULES.values()) == (carrier != "exemplars")
    solutions = [json.loads(line) for line in (sim.tmp_path / carrier / "solutions.jsonl").read_text().splitlines()]
    assert len(solutions) == result.n_mistakes_used and all(s["ok"] for s in solutions)
    explained = (sim.tmp_path / carrier / "explanations.jsonl").exists()
    assert explained == (carrier != "exemplars")  # exemplars alone need no explanation
    assert result.settings["carrier"] == carrier


def test_explanations_are_written_only_for_mistakes_the_teacher_solved(sim):
    solve = sim.teacher_engine.respond
    sim.teacher_engine.respond = lambda instructions, inputs, outputs: (
        {"reasoning": "?", "answer": "0"} if "question" in inputs and kind_of(inputs["question"]) == "vans"
        else solve(instructions, inputs, outputs))  # it cannot solve the vans problems
    cd = sim.optimizer()
    with dspy.context(adapter=dspy.ChatAdapter()):
        cd.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    run = sim.tmp_path / "run"
    solutions = {s["mistake_id"]: s for s in map(json.loads, (run / "solutions.jsonl").read_text().splitlines())}
    explained = {e["mistake_id"] for e in map(json.loads, (run / "explanations.jsonl").read_text().splitlines())}
    assert explained == {m for m, s in solutions.items() if s["ok"]} and len(explained) < len(solutions)
    assert cd.result.n_solved == len(explained)


def test_bootstrap_fewshot_then_cd_keeps_the_demos_and_adds_concepts_on_the_residual_mistakes(sim):
    with dspy.context(adapter=dspy.ChatAdapter()):
        bootstrapped = dspy.BootstrapFewShot(metric=sim.metric, teacher_settings={"lm": sim.teacher},
                                             max_bootstrapped_demos=1, max_labeled_demos=0).compile(
            dspy.ChainOfThought(COT), trainset=sim.trainset)
        bootstrapped.set_lm(None)
        first = [d["question"] for d in bootstrapped.predict.demos]
        cd = sim.optimizer(carrier="both")
        compiled = cd.compile(bootstrapped, trainset=sim.trainset, valset=sim.valset)
    demos = [d["question"] for d in compiled.predict.demos]
    assert len(first) == 1 and demos[:1] == first  # BootstrapFewShot's demo stays first
    assert cd.result.improved and len(demos) > 1
    assert [d["question"] for d in bootstrapped.predict.demos] == first  # its program is untouched


def test_a_new_carrier_rebuilds_the_concepts_without_solving_or_explaining_again(sim):
    with dspy.context(adapter=dspy.ChatAdapter()):
        first = sim.optimizer(carrier="rules")
        first.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
        run = sim.tmp_path / "run"
        solutions, explanations = ((run / f).read_text() for f in ("solutions.jsonl", "explanations.jsonl"))
        before = sim.teacher_engine.calls
        second = sim.optimizer(carrier="both")
        second.compile(dspy.ChainOfThought(COT), trainset=sim.trainset, valset=sim.valset)
    assert (run / "solutions.jsonl").read_text() == solutions  # kept, not redone
    assert (run / "explanations.jsonl").read_text() == explanations
    assert sim.teacher_engine.calls - before <= 1  # at most the consolidation of the rules, run again
    assert any(c.exemplar for c in second.result.rules) and not any(c.exemplar for c in first.result.rules)
