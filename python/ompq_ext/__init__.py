"""ompq_ext: OMPQ mixed-precision planning for PyTorch models."""

from .errors import FeatureError, InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError, PlanFileError

__version__ = "0.1.0"

from .budget import Budget, parse_budget  # noqa: E402
from .plan import Plan, plan  # noqa: E402
from .quant.api import calibrate, quant_report, quantize  # noqa: E402

__all__ = [
    "plan", "Plan", "quantize", "quant_report", "calibrate", "Budget", "parse_budget",
    "OmpqError", "OmpqValueError", "OmpqTypeError", "InfeasibleBudgetError", "FeatureError", "PlanFileError",
]
