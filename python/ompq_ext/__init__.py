"""ompq_ext: OMPQ mixed-precision planning for PyTorch models."""

from ._version import __version__
from .budget import Budget, parse_budget
from .errors import FeatureError, InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError, PlanFileError
from .plan import plan
from .quant.api import calibrate, quant_report, quantize
from .quant.configs import AdaRoundConfig, BRECQConfig, RTNConfig
from .record import Plan
from .sweep import Sweep, sweep
from . import export  # noqa: E402  (ompq_ext.export.onnx, save_packed, load_packed)

__all__ = [
    "__version__", "plan", "sweep", "Sweep", "Plan", "export", "quantize", "quant_report", "calibrate", "RTNConfig", "AdaRoundConfig",
    "BRECQConfig", "Budget", "parse_budget",
    "OmpqError", "OmpqValueError", "OmpqTypeError", "InfeasibleBudgetError", "FeatureError", "PlanFileError",
]
