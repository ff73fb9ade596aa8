"""Multi-predictor programs (for optimizers that must handle more than one predictor)."""

from __future__ import annotations

import dspy

__all__ = ["MakePlan", "PlanThenSolve", "SolveWithPlan"]


class MakePlan(dspy.Signature):
    """Write a short numbered list of steps that solves the math word problem. Do not compute the answer."""

    question: str = dspy.InputField()
    plan: str = dspy.OutputField(desc="numbered list of steps: 1. ... 2. ...")


class SolveWithPlan(dspy.Signature):
    """Follow the plan to solve the math word problem. Give the final numeric answer."""

    question: str = dspy.InputField()
    plan: str = dspy.InputField()
    answer: float = dspy.OutputField()


class PlanThenSolve(dspy.Module):
    """Two predictors: `plan` (question -> plan) then `solve` (question, plan -> answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.plan = dspy.Predict(MakePlan)
        self.solve = dspy.Predict(SolveWithPlan)

    def forward(self, question: str) -> dspy.Prediction:
        plan = self.plan(question=question).plan
        out = self.solve(question=question, plan=plan)
        return dspy.Prediction(plan=plan, answer=out.answer)
