"""The interface every budget kind implements, and the per-bit-width table check it shares with the
solver's value tables.

A constraint says what each group of layers costs at each of its allowed bit-widths, and bounds
the sum:  sum_g cost_g(bits_g) + fixed_cost <= limit.  Integer costs are kept exactly; float
costs are scaled to integers by the solver (costs rounded up, the limit down), so a plan it
accepts never breaks the float budget, and each plan is checked again in floats afterwards.

The groups handed to ``costs`` are the solver's ``GroupSpec``s: ``name``, ``layers`` (their layer
names), ``params``, ``macs`` (per sample) and ``act_bits``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from numbers import Real
from operator import index

from ..errors import InfeasibleBudgetError, OmpqValueError

FLOAT_SCALE_BITS = 40  # float costs become integers below 2**40 (the solver's scaling)


class Constraint(ABC):
    """One budget: ``sum_g cost_g(bits_g) + fixed_cost <= limit``. At most one of each ``kind`` per plan."""

    kind: str = ""  # "size", "bops", "latency", ...: names the budget in messages and plan records
    limit: Real  # the bound, in the constraint's own unit
    uses_act_bits: bool = False  # whether the cost depends on the activation bits (then ``joint_costs``)
    fixed_cost: Real = 0  # what the plan cannot change (size: the parameters outside the planned layers)

    @abstractmethod
    def costs(self, groups, allowed) -> list[dict[int, Real]]:
        """Per group, its cost at each of its allowed bit-widths (``allowed[g]``, sorted)."""

    def joint_costs(self, groups, allowed, act_allowed) -> list[dict[tuple[int, int], Real]]:
        """Per group, its cost at each (weight bits, activation bits) pair, where activation bits are chosen
        too (``act_allowed[g]``); by default the cost of the weight bits alone."""
        return [{(b, a): row[b] for b in bits for a in acts}
                for row, bits, acts in zip(self.costs(groups, allowed), allowed, act_allowed)]

    def coefficients(self, groups) -> list[int] | None:
        """For a cost linear in the bits (``cost_g(b) == c_g * b`` exactly, integers): the ``c_g``,
        which lets the solver write the constraint over the bit variables directly; else None."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """The budget in words with its unit, e.g. "size budget 0.75 MiB (6291456 bits)"."""

    def too_low(self, smallest) -> str:
        """What to tell the user when the budget is below the smallest cost any plan reaches
        (``smallest``, fixed cost included)."""
        return (f"{self.describe()} is below the smallest achievable {smallest!r} with every layer at its "
                f"lowest-cost allowed bits; raise the budget or allow other bits")

    def infeasible(self, smallest) -> InfeasibleBudgetError:
        return InfeasibleBudgetError(self.too_low(smallest), smallest=smallest)

    def to_json(self) -> dict:
        """The record of this budget in a plan: kind, value, a description, and the exact limit."""
        return {"kind": self.kind, "value": str(self.limit), "description": self.describe(), "limit": self.limit}


def check_limit(value, what: str, *, integer: bool = True):
    """A budget value: finite and >= 0 (an integer unless ``integer`` is False), or a named error."""
    try:
        value = index(value) if integer else float(value)
    except (TypeError, ValueError):
        raise OmpqValueError(f"{what} must be {'an integer' if integer else 'a number'}, got {value!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise OmpqValueError(f"{what} must be finite and >= 0, got {value}")
    return value


def per_bit_table(groups, allowed, rows, name: str, what: str, *, nonnegative: bool) -> list[dict[int, float]]:
    """Check a table given as one mapping bits -> number per group (``name``: how the argument is
    called in messages, ``what``: what one entry is); return {bit: float} for each group's allowed bits."""
    if len(rows) != len(groups):
        raise OmpqValueError(
            f"{name} has {len(rows)} entries for {len(groups)} groups; "
            f"give one mapping bits -> {what} per group, in group order"
        )
    return [bit_row(row, bits, f"group {g.name!r}", name, what, nonnegative=nonnegative)
            for g, bits, row in zip(groups, allowed, rows)]


def bit_row(row, bits, where: str, name: str, what: str, *, nonnegative: bool) -> dict[int, float]:
    """One entry of such a table (``where``: whose entry, for messages): {bit: float} over ``bits``."""
    if not isinstance(row, Mapping):
        raise OmpqValueError(f"{where}: {name} entry must be a mapping bits -> {what}")
    missing = [b for b in bits if b not in row]
    if missing:
        raise OmpqValueError(f"{where}: {name} has no entry for bits {missing}; give a {what} for every allowed bit-width")
    try:
        row = {b: float(row[b]) for b in bits}
    except (TypeError, ValueError):
        raise OmpqValueError(f"{where}: {what}s must be numbers") from None
    if not all(math.isfinite(v) and (v >= 0 or not nonnegative) for v in row.values()):
        raise OmpqValueError(f"{where}: {what}s must be finite{' and >= 0' if nonnegative else ''}")
    return row
