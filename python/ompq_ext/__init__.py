"""ompq_ext: OMPQ mixed-precision planning for PyTorch models."""

from .errors import FeatureError, InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError, PlanFileError

__version__ = "0.1.0"
