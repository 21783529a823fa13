"""Allocators: one module per method, each an ``Allocator`` (base.py) that scores the planned
layers for the exact solver. ``plan(method=...)`` takes a name from ``ALLOCATORS`` or an instance;
a new method is a new module here and one entry below (docs/ARCHITECTURE.md)."""

from .base import Allocator, Scores, ScoringInput
from .given import GivenScores
from .ompq import OMPQ

ALLOCATORS: dict[str, type[Allocator]] = {"ompq": OMPQ}

__all__ = ["ALLOCATORS", "Allocator", "Scores", "ScoringInput", "OMPQ", "GivenScores"]
