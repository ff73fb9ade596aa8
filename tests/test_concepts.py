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
from cd_dspy.phases.solve import exemplar_demos, quotes_given_answer, reaches_its_outputs, solve_mistakes
from cd_dspy.testing.simulated import HELPFUL_RULES, kind_of
from cd_dspy.testing.solving_teacher import SolvingTeacher

COT = "question -> answer: float"


def _mistakes(sim, n: int = 8) -> list[Mistake]:
    return [Mistake(id=f"m{i}", example_index=i, inputs=dict(e.inputs()), gold={"answer": e.answer},
                    outputs={"answer": -1.0}, score=0.0, feedback=None, steps=[])
            for i, e in enumerate(sim.trainset[:n])]


class QuotingSolver(SolvingTeacher):
    """Solves unit problems only when shown the answer, and then says it was given it."""

    def respond(self, instructions, inputs, outputs):
        reply = super().respond(instructions, inputs, outputs)
        if "You are given the correct answer" in instructions and "reasoning" in reply:
            reply["reasoning"] = f"The given answer is {reply['answer']}, so I write it down here."
        return reply


class SkippingSolver(SolvingTeacher):
    """Reasons at length unprimed, but its reasoning stops before the answer; primed, it derives it."""

    def respond(self, instructions, inputs, outputs):
        reply = super().respond(instructions, inputs, outputs)
        if "You are given the correct answer" not in instructions and "reasoning" in reply:
            reply["reasoning"] = ("Read the question carefully, convert the quantities first, then combine them "
                                  "as the question asks.")
        return reply


def _solve(sim, teacher, metric, n: int = 8):
    with dspy.context(adapter=dspy.ChatAdapter()):
        return solve_mistakes(dspy.ChainOfThought(COT), _mistakes(sim, n), sim.trainset, teacher_lm=teacher,
                              metric=ScoredMetric(metric), priming="gold", threshold=1.0)


def test_the_teacher_solves_alone_first_and_only_solutions_the_metric_accepts_are_kept(sim):
    wrong_on_vans = lambda e, p, trace=None: kind_of(e.question) != "vans" and abs(float(p.answer) - e.answer) < 1e-6  # noqa: E731
    solutions = _solve(sim, sim.teacher, wrong_on_vans)
    for solution, example in zip(solutions, sim.trainset, strict=False):
        assert solution.ok == (kind_of(example.question) != "vans")
        assert [t["priming"] for t in solution.tried] == (["none"] if solution.ok else ["none", "gold"])
    assert all(s.steps and s.steps[0]["predictor"] == "predict" for s in solutions if s.ok)


def test_priming_is_the_way_in_for_what_the_teacher_cannot_solve_alone_and_a_quoted_answer_is_refused(sim):
    kinds = [kind_of(e.question) for e in sim.trainset[:8]]
    assert "units" in kinds and len(set(kinds)) > 1
    solutions = _solve(sim, dspy.LM("simulated/solver", engine=SolvingTeacher(), cache=False), sim.metric)
    for solution, kind in zip(solutions, kinds, strict=True):  # it knows every rule but the unit conversion
        assert solution.ok and solution.priming == ("gold" if kind == "units" else "none")
    quoting = _solve(sim, dspy.LM("simulated/quoting", engine=QuotingSolver(), cache=False), sim.metric)
    for solution, kind in zip(quoting, kinds, strict=True):  # primed, it quoted its answer: refused
        assert solution.ok == (kind != "units")
        if kind == "units":
            assert solution.tried[-1]["quoted_given_answer"] and solution.tried[-1]["score"] == 1.0
    assert all(not quotes_given_answer([("predict", None, {}, s.steps[0]["outputs"])]) for s in quoting if s.ok)


def test_a_solution_whose_reasoning_never_reaches_its_answer_is_no_exemplar(sim):
    solutions = _solve(sim, dspy.LM("simulated/skipping", engine=SkippingSolver(), cache=False), sim.metric)
    for solution, kind in zip(solutions, (kind_of(e.question) for e in sim.trainset), strict=False):
        assert solution.ok and solution.priming == "gold"  # no derivation unprimed: the primed one is kept
        if kind != "units":  # right unprimed, but its reasoning never reaches the answer
            assert solution.tried[0]["score"] == 1.0 and not solution.tried[0]["reasoning_reaches_answer"]
    call = lambda outputs: [("predict", None, {}, outputs)]  # noqa: E731
    long = "Three hours are 3 * 60 = 180 minutes; with the 35 more minutes that makes {} minutes."
    assert reaches_its_outputs(call({"reasoning": long.format("1,215"), "answer": 1215.0}))
    assert not reaches_its_outputs(call({"reasoning": long.format("some"), "answer": 215.0}))
    assert reaches_its_outputs(call({"reasoning": "Short.", "answer": 215.0}))  # no long text: nothing to check
    assert reaches_its_outputs(call({"reasoning": long.format(7), "code": "def f(x):\n" + "    x += 1\n" * 9}))


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
