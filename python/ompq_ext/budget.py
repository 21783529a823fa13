"""Budgets: parse what the user writes ("4.5MiB", "3.5bits", "75GBOPs", 0.15) and
turn it into the exact integer constraint the solver takes.

Units
-----
- size: ``B``, ``KB``/``MB``/``GB`` (powers of 1000), ``KiB``/``MiB``/``GiB``
  (powers of 1024; the paper's "Mb" is MiB). Units are case-insensitive, but a
  capitalised prefix with a lowercase ``b`` ("Mb", "Kib") could mean bits or
  bytes and is refused. Model size counts every parameter:
  planned weights at their bits, everything else (biases, norms, layers left
  out of the plan) at 32 bits, and the quantizers' scales (``plan(scale_bits=)``,
  16 bits each by default: one per output channel or group, one per quantized
  input). Buffers are not counted.
- average bits: ``3.5bits`` -- mean bits per weight over the planned
  layers (fixed-bit layers included), the size of the model with every planned
  weight at that many bits: the other parameters at 32 bits and the scales are
  added (GPTQ's "4-bit, group 128" is ``4bits`` with ``group_size=128``).
- fraction: a bare number in (0, 1] such as ``0.15`` -- that fraction of the
  model's FP32 size.
- BOPs: ``BOPs``, ``KBOPs``, ``MBOPs``, ``GBOPs``, ``TBOPs`` -- per input sample,
  sum over planned layers of MACs x weight bits x activation bits.
- a bare integer > 1 is a size in bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .constraints import BopsConstraint, Constraint, SizeConstraint
from .errors import OmpqTypeError, OmpqValueError

_SIZE_UNITS = {
    "b": 1, "byte": 1, "bytes": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
_BOPS_UNITS = {"bops": 1, "kbops": 10**3, "mbops": 10**6, "gbops": 10**9, "tbops": 10**12}
_BITS_UNITS = {"bits", "bit", "b/w", "bpw"}

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")

KINDS = ("size", "avg_bits", "fraction", "bops")


@dataclass(frozen=True)
class Budget:
    """One budget. ``value`` is exact: bytes for size, bits for avg_bits, a
    fraction of the FP32 size for fraction, BOPs per sample for bops."""

    kind: str
    value: Fraction
    text: str

    def describe(self) -> str:
        v = float(self.value)
        if self.kind == "size":
            return f"{v / 2**20:.4f} MiB ({int(self.value)} bytes)"
        if self.kind == "avg_bits":
            return f"{v:g} bits per weight on average"
        if self.kind == "fraction":
            return f"{v:g} of the FP32 size"
        return f"{v / 1e9:.4f} GBOPs per sample"

    def size_limit_bits(self, *, planned_params: int, other_params: int, scale_bits: int = 0) -> int | None:
        """The model-size limit in bits this budget implies, or None for a BOPs budget; ``scale_bits``:
        what the quantizers' scales take, on top of an average-bits budget's weights."""
        other_bits = 32 * other_params
        if self.kind == "size":
            return math.floor(self.value * 8)
        if self.kind == "avg_bits":
            return math.floor(self.value * planned_params) + other_bits + scale_bits
        if self.kind == "fraction":
            return math.floor(self.value * 32 * (planned_params + other_params))
        return None

    def bops_limit(self) -> int | None:
        return math.floor(self.value) if self.kind == "bops" else None

    def constraint(self, *, planned_params: int, other_params: int, scale_bits: int = 0) -> Constraint:
        """The solver's constraint for this budget (other parameters count 32 bits in a size, and the
        scales ``scale_bits``)."""
        if self.kind == "bops":
            return BopsConstraint(self.bops_limit())
        size = self.size_limit_bits(planned_params=planned_params, other_params=other_params, scale_bits=scale_bits)
        return SizeConstraint(size, other_bits=32 * other_params + scale_bits)

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": str(self.value), "text": self.text}


# The largest size (bytes) and BOPs a budget may name: sizes are counted in 64-bit integers of bits.
MAX_SIZE_BYTES, MAX_BOPS = 2**59, 2**62


def parse_budget(spec) -> Budget:
    """Parse one budget: a string with a unit, a float fraction in (0, 1], or an int of bytes."""
    if isinstance(spec, int) and not isinstance(spec, bool) and spec > MAX_SIZE_BYTES:  # before str(): it may be huge
        raise OmpqValueError(f"budget (an integer of {spec.bit_length()} bits) is too large to represent as bytes (at "
                             f"most 2^59); a budget above the model's FP32 size leaves every layer at the widest bits: "
                             f"give that instead")
    budget = _parse_budget(spec)
    top = MAX_BOPS if budget.kind == "bops" else MAX_SIZE_BYTES
    if budget.kind in ("size", "bops") and budget.value > top:
        unit = "BOPs" if budget.kind == "bops" else "bytes"
        raise OmpqValueError(f"budget {budget.text[:40]!r}{'...' if len(budget.text) > 40 else ''} is too large to "
                             f"represent (at most 2^{top.bit_length() - 1} {unit}); a budget above the model's FP32 "
                             f"size (or its largest BOPs) leaves every layer at the widest bits: give that instead")
    return budget


def _parse_budget(spec) -> Budget:
    if isinstance(spec, Budget):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise OmpqTypeError(
            f"budget must be a string such as '4.5MiB', '3.5bits', '0.15' or '75GBOPs', or a number; "
            f"got {type(spec).__name__}"
        )
    text = str(spec)
    if isinstance(spec, float) and not math.isfinite(spec):
        raise OmpqValueError(f"budget must be finite, got {spec}")
    match = _PATTERN.match(text)
    if not match:
        raise OmpqValueError(
            f"cannot read budget {text!r}: write a number with a unit, e.g. '4.5MiB', '5MB', '3.5bits', "
            f"'75GBOPs', or a fraction of the FP32 size such as '0.15'"
        )
    number, unit = Fraction(match.group(1)), match.group(2).lower()
    if number <= 0:
        raise OmpqValueError(f"budget {text!r} must be positive")
    if unit == "":
        if number <= 1:
            return Budget("fraction", number, text)
        if number.denominator != 1:
            raise OmpqValueError(
                f"budget {text!r}: a bare number above 1 means bytes and must be whole; "
                f"add a unit such as 'MiB' or 'bits', or give a fraction in (0, 1]"
            )
        return Budget("size", number, text)
    if unit in _SIZE_UNITS:
        written = match.group(2)
        if written.endswith("b") and written != written.lower():  # "Mb", "Kib": the SI bit symbol
            raise OmpqValueError(
                f"budget {text!r}: {match.group(2)!r} could mean bits or bytes; write MiB (the paper's 'Mb'), "
                f"MB or bytes for a size, or 'bits' for an average bit-width"
            )
        return Budget("size", number * _SIZE_UNITS[unit], text)
    if unit in _BOPS_UNITS:
        return Budget("bops", number * _BOPS_UNITS[unit], text)
    if unit in _BITS_UNITS:
        if number > 32:
            raise OmpqValueError(f"budget {text!r}: average bits per weight must be at most 32")
        return Budget("avg_bits", number, text)
    raise OmpqValueError(
        f"unknown budget unit {match.group(2)!r} in {text!r}; use one of "
        f"B, KB, MB, GB, KiB, MiB, GiB (size), bits (average bits per weight), "
        f"BOPs, KBOPs, MBOPs, GBOPs, TBOPs, or a bare fraction of the FP32 size"
    )


def parse_budgets(spec) -> list[Budget | Constraint]:
    """A single budget or a list/tuple of them; at most one size-type and one BOPs budget. A
    ``Constraint`` (a budget kind of its own, such as a ``LatencyConstraint``) is taken as it is;
    at most one of each kind."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise OmpqValueError("budget is empty: give at least one, e.g. budget='4.5MiB'")
    budgets = [s if isinstance(s, Constraint) else parse_budget(s) for s in items]
    parsed = [b for b in budgets if isinstance(b, Budget)]
    if sum(b.kind != "bops" for b in parsed) > 1:
        raise OmpqValueError(
            "give at most one size budget (MiB/MB/bytes, bits or fraction) and at most one BOPs budget; "
            f"got {[b.text for b in parsed]}"
        )
    if sum(b.kind == "bops" for b in parsed) > 1:
        raise OmpqValueError(f"give at most one BOPs budget; got {[b.text for b in parsed]}")
    return budgets
