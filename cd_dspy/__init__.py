"""cd-dspy: Concept Distillation for DSPy programs."""

import os

# litellm downloads its model price map at import unless told to use the copy it ships; this project
# runs offline (an explicit setting of the variable wins).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from cd_dspy.config import (  # noqa: E402
    ConceptSettings,
    ConfirmationSettings,
    SearchSettings,
    VerificationSettings,
    grouped,
)
from cd_dspy.core.failures import LMUnavailableError  # noqa: E402
from cd_dspy.core.priming import PRIMING_STRATEGIES  # noqa: E402
from cd_dspy.core.result import ConceptDistillationResult, Explanation, Mistake, RoleUsage, Rule, Trial  # noqa: E402
from cd_dspy.core.usage import Budget, BudgetExhausted  # noqa: E402
from cd_dspy.migration.api import MigrationReport, migrate  # noqa: E402
from cd_dspy.migration.transfer import check_rulebook  # noqa: E402
from cd_dspy.optimizer import AUTO_PRESETS, ConceptDistillation  # noqa: E402
from cd_dspy.phases.integrate import RulePredict, load_program  # noqa: E402
from cd_dspy.phases.rulebook import Rulebook, export_rulebook  # noqa: E402
from cd_dspy.scale.workers import Workers  # noqa: E402

__all__ = [
    "AUTO_PRESETS",
    "PRIMING_STRATEGIES",
    "Budget",
    "BudgetExhausted",
    "ConceptDistillation",
    "ConceptDistillationResult",
    "ConceptSettings",
    "ConfirmationSettings",
    "Explanation",
    "LMUnavailableError",
    "MigrationReport",
    "Mistake",
    "RoleUsage",
    "Rule",
    "RulePredict",
    "SearchSettings",
    "Rulebook",
    "Trial",
    "VerificationSettings",
    "Workers",
    "check_rulebook",
    "export_rulebook",
    "grouped",
    "load_program",
    "local_lm",
    "migrate",
]


def __getattr__(name: str):
    if name == "local_lm":  # lazy: llama-cpp-python is an optional extra
        from cd_dspy.lms import local_lm

        return local_lm
    raise AttributeError(f"module 'cd_dspy' has no attribute {name!r}")
