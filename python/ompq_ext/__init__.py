"""ompq_ext: OMPQ mixed-precision planning for PyTorch models."""

from ._version import __version__
from .budget import Budget, parse_budget
from .errors import FeatureError, InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError, PlanFileError
from .plan import plan
from .quant.api import calibrate, quant_report, quantize
from .quant.configs import AdaRoundConfig, BRECQConfig, RTNConfig
from .record import Plan

__all__ = [
    "__version__", "plan", "Plan", "quantize", "quant_report", "calibrate", "RTNConfig", "AdaRoundConfig",
    "BRECQConfig", "Budget", "parse_budget",
    "OmpqError", "OmpqValueError", "OmpqTypeError", "InfeasibleBudgetError", "FeatureError", "PlanFileError",
]
