"""Latency from a measured table: sum_g table[g][bits_g], in whatever unit the table is in."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import OmpqTypeError, OmpqValueError
from .base import FLOAT_SCALE_BITS, Constraint, check_limit, per_bit_table


class LatencyConstraint(Constraint):
    """The summed latency stays within ``budget``.

    ``table``: ``{layer name: {bits: cost}}`` (a group of tied layers costs the sum of its
    layers), or one mapping ``{bits: cost}`` per group, in the solver's group order. Every
    allowed bit-width of every planned layer needs a finite cost >= 0.
    """

    kind = "latency"

    def __init__(self, table, budget: float):
        if not isinstance(table, (Mapping, list, tuple)):
            raise OmpqTypeError("the latency table must be a dict {layer name: {bits: cost}}")
        self.table = table
        self.limit = check_limit(budget, "latency_budget", integer=False)

    def _rows(self, groups):
        if not isinstance(self.table, Mapping):
            return self.table
        rows = []
        for g in groups:
            costs: dict[int, float] = {}
            for name in g.layers or (g.name,):
                if name not in self.table:
                    raise OmpqValueError(f"the latency table has no entry for layer {name!r}")
                row = self.table[name]
                if not isinstance(row, Mapping):
                    raise OmpqValueError(f"layer {name!r}: the latency table entry must be a mapping bits -> cost")
                for b, c in row.items():
                    costs[int(b)] = costs.get(int(b), 0.0) + float(c)
            rows.append(costs)
        return rows

    def costs(self, groups, allowed):
        return per_bit_table(groups, allowed, self._rows(groups), "latency table", "latency cost", nonnegative=True)

    def describe(self) -> str:
        return f"latency budget {self.limit}"

    def too_low(self, smallest) -> str:
        return (f"latency budget {self.limit:.6g} is below the smallest achievable latency {smallest:.6g} (every "
                f"layer at its fastest allowed bit-width, costs rounded up to 2**-{FLOAT_SCALE_BITS} of the largest); "
                "raise the budget or allow other bits")

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.limit, "description": f"latency {self.limit:g}", "limit": self.limit}
