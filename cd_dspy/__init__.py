"""cd-dspy: Concept Distillation for DSPy programs."""

from cd_dspy.optimizer import AUTO_PRESETS, ConceptDistillation
from cd_dspy.priming import PRIMING_STRATEGIES
from cd_dspy.result import ConceptDistillationResult, Explanation, Mistake, RoleUsage, Rule, Trial
from cd_dspy.usage import Budget, BudgetExhausted

__all__ = [
    "AUTO_PRESETS",
    "PRIMING_STRATEGIES",
    "Budget",
    "BudgetExhausted",
    "ConceptDistillation",
    "ConceptDistillationResult",
    "Explanation",
    "Mistake",
    "RoleUsage",
    "Rule",
    "Trial",
    "local_lm",
]


def __getattr__(name: str):
    if name == "local_lm":  # lazy: llama-cpp-python is an optional extra
        from cd_dspy.lms import local_lm

        return local_lm
    raise AttributeError(f"module 'cd_dspy' has no attribute {name!r}")
