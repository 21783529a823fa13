"""Model size: sum_g params_g * bits_g plus the bits of every parameter outside the plan, in bits."""

from __future__ import annotations

from fractions import Fraction

from .base import Constraint, check_limit


def mib(size_bits) -> str:
    return f"{size_bits / 8 / 2**20:.4g} MiB"


class SizeConstraint(Constraint):
    """The model stays within ``limit_bits``; ``other_bits`` (parameters left out of the plan, at
    their own precision) count against it too."""

    kind = "size"

    def __init__(self, limit_bits: int, other_bits: int = 0):
        self.limit = check_limit(limit_bits, "limit_bits")
        self.fixed_cost = check_limit(other_bits, "other_bits")

    def costs(self, groups, allowed):
        return [{b: g.params * b for b in bits} for g, bits in zip(groups, allowed)]

    def coefficients(self, groups):
        return [g.params for g in groups]

    def describe(self) -> str:
        return f"size budget {mib(self.limit)} ({self.limit} bits)"

    def to_json(self) -> dict:  # value in bytes, as a size budget's record
        return {**super().to_json(), "value": str(Fraction(self.limit, 8))}

    def too_low(self, smallest) -> str:
        return (f"{self.describe()} is below the smallest achievable size {mib(smallest)} ({smallest} bits) with "
                "every layer at its lowest allowed bits; raise the budget or allow fewer bits")
