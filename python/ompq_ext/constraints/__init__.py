"""Budget kinds: each is one ``Constraint`` (base.py) in a file of its own. A new kind is a new
class here; ``solve`` and ``plan`` take it as it is (docs/ARCHITECTURE.md)."""

from .base import Constraint
from .bops import BopsConstraint
from .latency import LatencyConstraint
from .size import SizeConstraint

__all__ = ["Constraint", "SizeConstraint", "BopsConstraint", "LatencyConstraint"]
