"""cd-dspy: Concept Distillation for DSPy programs."""

import os

# litellm downloads its model price map at import unless told to use the copy it ships; this project
# runs offline (an explicit setting of the variable wins).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from cd_dspy.failures import LMUnavailableError  # noqa: E402
from cd_dspy.integrate import RulePredict, load_program  # noqa: E402
from cd_dspy.migration import MigrationReport, migrate  # noqa: E402
from cd_dspy.optimizer import AUTO_PRESETS, ConceptDistillation  # noqa: E402
from cd_dspy.priming import PRIMING_STRATEGIES  # noqa: E402
from cd_dspy.result import ConceptDistillationResult, Explanation, Mistake, RoleUsage, Rule, Trial  # noqa: E402
from cd_dspy.rulebook import Rulebook, export_rulebook  # noqa: E402
from cd_dspy.transfer import check_rulebook  # noqa: E402
from cd_dspy.usage import Budget, BudgetExhausted  # noqa: E402
from cd_dspy.workers import Workers  # noqa: E402

__all__ = [
    "AUTO_PRESETS",
    "PRIMING_STRATEGIES",
    "Budget",
    "BudgetExhausted",
    "ConceptDistillation",
    "ConceptDistillationResult",
    "Explanation",
    "LMUnavailableError",
    "MigrationReport",
    "Mistake",
    "RoleUsage",
    "Rule",
    "RulePredict",
    "Rulebook",
    "Trial",
    "Workers",
    "check_rulebook",
    "export_rulebook",
    "load_program",
    "local_lm",
    "migrate",
]


def __getattr__(name: str):
    if name == "local_lm":  # lazy: llama-cpp-python is an optional extra
        from cd_dspy.lms import local_lm

        return local_lm
    raise AttributeError(f"module 'cd_dspy' has no attribute {name!r}")
