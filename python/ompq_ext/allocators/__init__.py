"""Allocators: one module per method, each an ``Allocator`` (base.py) that scores the planned
layers for the exact solver. ``plan(method=...)`` takes a name from ``ALLOCATORS`` or an instance;
a new method is a new module here and one entry below (docs/ARCHITECTURE.md)."""

from .base import Allocator, Scores, ScoringInput
from .given import GivenScores
from .hessian import HessianTrace
from .kl import KLTable
from .ompq import OMPQ
from .output_error import OutputError
from .verified import Verified

ALLOCATORS: dict[str, type[Allocator]] = {"ompq": OMPQ, "output_error": OutputError, "kl": KLTable,
                                          "hessian": HessianTrace, "verified": Verified}

__all__ = ["ALLOCATORS", "Allocator", "Scores", "ScoringInput", "OMPQ", "OutputError", "KLTable", "HessianTrace",
           "Verified", "GivenScores"]
