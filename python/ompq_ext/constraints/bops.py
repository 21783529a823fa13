"""Bit operations per sample: sum_g MACs_g * activation bits_g * weight bits_g."""

from __future__ import annotations

from .base import Constraint, check_limit


class BopsConstraint(Constraint):
    """At most ``limit`` BOPs per input sample."""

    kind = "bops"
    uses_act_bits = True

    def __init__(self, limit: int):
        self.limit = check_limit(limit, "BOPs limit")

    def costs(self, groups, allowed):
        return [{b: g.macs * g.act_bits * b for b in bits} for g, bits in zip(groups, allowed)]

    def joint_costs(self, groups, allowed, act_allowed):
        return [{(b, a): g.macs * a * b for b in bits for a in acts}
                for g, bits, acts in zip(groups, allowed, act_allowed)]

    def coefficients(self, groups):
        return [g.macs * g.act_bits for g in groups]

    def describe(self) -> str:
        return f"BOPs budget {self.limit}"

    def too_low(self, smallest) -> str:
        return (f"BOPs budget {self.limit:.4g} ({self.limit} BOPs) is below the smallest achievable {smallest:.4g} "
                f"BOPs ({smallest}) with every layer at its lowest allowed bits; raise the budget, allow fewer bits "
                "or lower the activation bits")
