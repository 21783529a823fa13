"""The allocation problem: the planned layers in groups that share bits, each group's allowed
bit-widths, and one constraint per budget; then the exact solve of an allocator's scores on it.

Two steps, because the user's options are checked before the feature pass (a typo should not
cost a forward pass) while the groups and their MACs are known only after it (and with them the
per-layer tables, such as a latency table, are checked): ``check_options`` -> ``build_problem`` ->
``solve_problem``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from dataclasses import dataclass

import numpy as np
from torch import nn

from .allocators import Scores
from .budget import Budget, parse_budgets
from .constraints import Constraint, LatencyConstraint
from .errors import OmpqTypeError, OmpqValueError, user_stacklevel
from .layers import Layer, LayerGroup, count_parameters, group_layers, scale_count
from .solver import Allocation, GroupSpec, solve

# ---------------------------------------------------------------- options


@dataclass
class Options:
    """The checked options that shape the problem."""

    bits: tuple[int, ...] | None  # the bit choices; None: a window around the budget
    act_bits: int  # activation bits (the largest choice where they are chosen)
    act_choices: tuple[int, ...]  # activation bits to choose from per layer; () where they are fixed
    fixed: dict[str, int]  # layer name -> fixed bits, patterns resolved
    budgets: list  # Budgets and Constraints, in the user's order (a latency table last)


def check_options(layers: list[Layer], *, budget, bits, act_bits, fixed_bits, latency_table,
                  latency_budget) -> Options:
    act_choices = _act_set(act_bits)
    act_bits = act_choices[-1]
    if len(act_choices) == 1:
        act_choices = ()
    if (latency_table is None) != (latency_budget is None):
        raise OmpqValueError("latency_table and latency_budget go together: give both or neither")
    budgets = parse_budgets(budget)
    if latency_table is not None:
        budgets.append(LatencyConstraint(latency_table, latency_budget))
    kinds = [("size" if b.kind != "bops" else "bops") if isinstance(b, Budget) else b.kind for b in budgets]
    for kind in sorted(set(kinds)):
        if kinds.count(kind) > 1:
            raise OmpqValueError(f"two {kind} budgets given; give at most one of each kind")
    return Options(bits=None if bits is None else _bit_set(bits), act_bits=act_bits, act_choices=act_choices,
                   fixed=_fixed_bits_for([x.name for x in layers], fixed_bits), budgets=budgets)


def _act_set(act_bits) -> tuple[int, ...]:
    """Activation bits: one integer in 1..32 (fixed), or a collection of them to choose from per layer."""
    values = [act_bits] if isinstance(act_bits, (int, np.integer)) and not isinstance(act_bits, bool) else act_bits
    if isinstance(values, (str, bytes, bool)) or not hasattr(values, "__iter__"):
        raise OmpqValueError(f"act_bits must be an integer in 1..32 or a collection of them such as (4, 8), "
                             f"got {act_bits!r}")
    values = list(values)
    if not values or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 1 <= a <= 32
                         for a in values):
        raise OmpqValueError(f"act_bits must be an integer in 1..32 or a collection of them such as (4, 8), "
                             f"got {act_bits!r}")
    return tuple(sorted({int(a) for a in values}))


def _bit_set(bits) -> tuple[int, ...]:
    if isinstance(bits, (str, bytes)) or not hasattr(bits, "__iter__"):
        raise OmpqTypeError(f"bits must be a collection of integers such as range(2, 9), got {bits!r}")
    values = list(bits)
    if not values:
        raise OmpqValueError("bits is empty: give the bit-widths to choose from, e.g. bits=range(2, 9)")
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise OmpqTypeError(f"bits must hold integers, got {b!r}")
    if min(values) < 1 or max(values) > 16:
        raise OmpqValueError(f"bits must lie in 1..16, got {sorted(values)}")
    return tuple(sorted(set(int(b) for b in values)))


def _fixed_bits_for(layer_names, fixed_bits) -> dict[str, int]:
    """Layer name -> fixed bits, from {name or glob pattern: bits}."""
    if not fixed_bits:
        return {}
    if not isinstance(fixed_bits, dict):
        raise OmpqTypeError("fixed_bits must be a dict {layer name or glob pattern: bits}, e.g. {'conv1': 8}")
    out = {}
    for pattern, b in fixed_bits.items():
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise OmpqValueError(f"fixed_bits[{pattern!r}] must be an integer in 1..16, got {b!r}")
        hits = [n for n in layer_names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise OmpqValueError(f"fixed_bits pattern {pattern!r} matches no planned layer")
        for n in hits:
            if n in out and out[n] != b:
                raise OmpqValueError(f"fixed_bits gives layer {n!r} both {out[n]} and {b} bits")
            out[n] = b
    return out


# ---------------------------------------------------------------- the problem


@dataclass
class Problem:
    """Groups of planned layers with their allowed bits (``specs``, weights still 0) and the constraints."""

    groups: list[LayerGroup]
    specs: list[GroupSpec]
    constraints: list[Constraint]
    budget_records: list[dict]
    bits: tuple[int, ...]  # the choices of the groups without fixed bits
    macs: dict[str, int]  # layer -> MACs per sample
    total_params: int
    planned_params: int
    other_params: int
    scale_bits: int = 0  # what the quantizers' scales take in the model's size

    @property
    def fixed_bits(self) -> int:
        """The size the plan cannot change: the other parameters at 32 bits and the scales."""
        return 32 * self.other_params + self.scale_bits


def scale_overhead(planned: list[Layer], channel_axes: list[int], *, group_size: int | None, act_bits: int,
                   scale_bits: int) -> int:
    """The bits of the quantizers' scales: ``scale_bits`` for each weight scale (one per output channel, or
    per group of ``group_size``; a shared weight once) and for each quantized input (one per planned layer
    but embeddings, whose inputs are ids; none when activations stay at 32 bits)."""
    counted, scales = set(), 0
    for layer, axis in zip(planned, channel_axes):
        weight = layer.weight
        if id(weight) not in counted:
            counted.add(id(weight))
            scales += scale_count(weight, axis, group_size)
        if act_bits < 32 and layer.kind != "Embedding":  # (the smallest choice, where they are chosen)
            scales += 1
    return scale_bits * scales


def build_problem(model: nn.Module, planned: list[Layer], macs: dict[str, int], options: Options, ties,
                  scale_bits: int = 0) -> Problem:
    unplanned = sorted(set(options.fixed) - {x.name for x in planned})
    if unplanned:
        warnings.warn(f"fixed_bits names {len(unplanned)} weight(s) that no op used in the forward pass, so they are not "
                      f"planned and their bits are not used: {', '.join(unplanned[:8])}"
                      f"{', ...' if len(unplanned) > 8 else ''}", stacklevel=user_stacklevel())
    groups = group_layers(planned, ties)
    total_params = count_parameters(model)
    planned_params = sum(g.params for g in groups)
    other_params = total_params - planned_params
    specs = []
    for g in groups:
        fixed_here = {options.fixed[n] for n in g.layers if n in options.fixed}
        if len(fixed_here) > 1:
            raise OmpqValueError(f"fixed_bits gives the tied layers of group {g.name!r} different bits {sorted(fixed_here)}")
        specs.append(GroupSpec(name=g.name, params=g.params, macs=sum(macs[n] for n in g.layers), weight=0.0,
                               bits=tuple(fixed_here), act_bits=options.act_bits, layers=tuple(g.layers),
                               act_choices=options.act_choices))
    constraints, records = [], []
    for item in options.budgets:
        if isinstance(item, Budget):
            c = item.constraint(planned_params=planned_params, other_params=other_params, scale_bits=scale_bits)
            records.append({**item.to_json(), "description": item.describe(), "limit": c.limit})
        else:
            c = item
            records.append(c.to_json())
        constraints.append(c)
    # Size before BOPs before the rest, as the solver has always built its model (the plan is the
    # same in any order; only a search cut short by a time limit could tell them apart).
    constraints.sort(key=lambda c: {"size": 0, "bops": 1}.get(c.kind, 2))
    bits = options.bits or _bits_around(_free_averages(specs, constraints))
    specs = [s if s.bits else dataclasses.replace(s, bits=bits) for s in specs]
    return Problem(groups=groups, specs=specs, constraints=constraints, budget_records=records, bits=bits,
                   macs=macs, total_params=total_params, planned_params=planned_params, other_params=other_params,
                   scale_bits=scale_bits)


def _free_averages(specs: list[GroupSpec], constraints: list[Constraint]) -> list[float]:
    """Under each budget linear in the bits (size, BOPs): the average bits its coefficients allow
    the groups without fixed bits, after the fixed ones and the fixed cost are paid."""
    averages = []
    for c in constraints:
        coef = c.coefficients(specs)
        if coef is None:
            continue
        free = sum(k for k, s in zip(coef, specs) if not s.bits)
        if free:
            spent = c.fixed_cost + sum(k * s.bits[0] for k, s in zip(coef, specs) if s.bits)
            averages.append((c.limit - spent) / free)
    return averages


def _bits_around(averages) -> tuple[int, ...]:
    """The default bit choices: the integers within one bit of the tightest budget's average
    bits per free weight, inside 2..8. A linear objective over a wide range puts layers at
    the extremes; a window around the budget keeps every layer usable after plain rounding."""
    if not averages:
        return tuple(range(2, 9))
    avg = min(averages)
    lo = min(max(math.floor(avg) - 1, 2), 7)
    hi = max(min(math.ceil(avg) + 1, 8), lo + 1)
    return tuple(range(lo, hi + 1))


# ---------------------------------------------------------------- solve


def solve_problem(problem: Problem, scores: Scores, time_limit_s: float) -> Allocation:
    """The exact allocation of ``scores`` (summed over each group's layers) under every constraint."""
    specs, values, act_values = problem.specs, None, None
    joint = bool(specs[0].act_choices)
    if scores.values is None:
        specs = [dataclasses.replace(s, weight=float(sum(scores.weights[n] for n in g.layers)))
                 for s, g in zip(specs, problem.groups)]
    else:
        values = [_group_values(s.bits, g, scores.values) for s, g in zip(specs, problem.groups)]
        if joint and scores.act_values is None:
            raise OmpqValueError("act_bits gives activation bits to choose from, but the allocator scored the weight "
                                 "bits alone; use method='verified', 'output_error' or 'ompq', or give act_values")
    if joint and scores.act_values is not None:
        act_values = [_group_values(s.act_choices, g, scores.act_values, "activation ") for s, g in
                      zip(specs, problem.groups)]
    return solve(specs, problem.constraints, values=values, act_values=act_values, other_bits=problem.fixed_bits,
                 time_limit_s=time_limit_s)


def allocation_at(problem: Problem, scores: Scores, bits: list[int]) -> Allocation:
    """The given bits per group as an allocation of ``problem`` (no solve; the budgets are not checked): its
    size and BOPs, and its objective under ``scores`` (NaN where they do not score those bits). Status "GIVEN"."""
    specs, acts = problem.specs, [s.act_bits for s in problem.specs]
    try:
        if scores.values is None:
            objective = math.fsum(sum(scores.weights[n] for n in g.layers) * b for g, b in zip(problem.groups, bits))
        else:
            objective = math.fsum(_group_values((b,), g, scores.values)[b] for g, b in zip(problem.groups, bits))
    except OmpqValueError:
        objective = math.nan
    size = sum(s.params * b for s, b in zip(specs, bits)) + problem.fixed_bits
    bops = sum(s.macs * b * a for s, b, a in zip(specs, bits, acts))
    return Allocation(bits=list(bits), status="GIVEN", objective=objective, bound=objective, gap=0.0, size_bits=size,
                      bops=bops, latency=None, solve_time_s=0.0, act_bits=acts, engine="none")


def _group_values(bits: tuple[int, ...], group: LayerGroup, values, what: str = "") -> dict[int, float]:
    """The group's value at each allowed (activation, where ``what`` says so) bit-width: the sum over its
    layers (each checked to be a number)."""
    out = {}
    for b in bits:
        total = 0.0
        for n in group.layers:
            try:
                total += float(values[n][b])
            except KeyError:
                raise OmpqValueError(f"the allocator gave layer {n!r} no value for {b} {what}bits; "
                                     f"give one for every allowed {what}bit-width {list(bits)}") from None
            except (TypeError, ValueError):
                raise OmpqValueError(f"the allocator's value of layer {n!r} at {b} {what}bits is not a number: "
                                     f"{values[n][b]!r}") from None
        out[b] = total
    return out
