"""Latency from a measured table: sum_g table[g][bits_g], in whatever unit the table is in."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..errors import OmpqTypeError, OmpqValueError
from .base import FLOAT_SCALE_BITS, Constraint, bit_row, check_limit, per_bit_table


class LatencyConstraint(Constraint):
    """The summed latency stays within ``budget``.

    ``table``: ``{layer name: {bits: cost}}``, where every planned layer has a finite cost >= 0 at
    each bit-width it may take (bits as integers, or strings such as "4" from a JSON file), and a
    group of tied layers costs the sum of its layers; or one mapping ``{bits: cost}`` per group, in
    the solver's group order.
    """

    kind = "latency"

    def __init__(self, table, budget: float):
        if not isinstance(table, (Mapping, list, tuple)):
            raise OmpqTypeError("the latency table must be a dict {layer name: {bits: cost}}")
        self.table = table
        self.limit = check_limit(budget, "latency_budget", integer=False)

    def costs(self, groups, allowed):
        if not isinstance(self.table, Mapping):
            return per_bit_table(groups, allowed, self.table, "latency table", "latency cost", nonnegative=True)
        rows = []
        for g, bits in zip(groups, allowed):
            layers = [self._layer_row(name, bits) for name in g.layers or (g.name,)]
            rows.append({b: math.fsum(row[b] for row in layers) for b in bits})
        return rows

    def _layer_row(self, name: str, bits) -> dict[int, float]:
        if name not in self.table:
            raise OmpqValueError(f"the latency table has no entry for layer {name!r}")
        row = self.table[name]
        if isinstance(row, Mapping):
            row = {_bit_key(name, b): cost for b, cost in row.items()}
        return bit_row(row, bits, f"layer {name!r}", "latency table", "latency cost", nonnegative=True)

    def describe(self) -> str:
        return f"latency budget {self.limit}"

    def too_low(self, smallest) -> str:
        return (f"latency budget {self.limit:.6g} is below the smallest achievable latency {smallest:.6g} (every "
                f"layer at its fastest allowed bit-width, costs rounded up to 2**-{FLOAT_SCALE_BITS} of the largest); "
                "raise the budget or allow other bits")

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.limit, "description": f"latency {self.limit:g}", "limit": self.limit}


def _bit_key(name: str, key) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    if isinstance(key, bool) or not isinstance(key, int):
        raise OmpqValueError(f"layer {name!r}: the latency table has an entry for bits {key!r}; bits are integers")
    return key
