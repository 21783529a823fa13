"""Bit allocation: the exact CP-SAT model, and the reference's continuous relaxation.

Exact model (``solve``)
-----------------------
One integer variable per group, ``bits[g]``, whose domain is the group's allowed bit-widths.
Every budget is one linear constraint over those variables, in exact integers:

    size     sum_g params_g * bits_g + other_bits        <= size_budget_bits
    BOPs     sum_g macs_g * act_bits_g * bits_g          <= bops_budget
    latency  sum_g sum_b L[g][b] * is[g, b]              <= latency budget

For latency, ``is[g, b]`` are 0/1 variables (exactly one per group, ``bits_g = sum_b b * is[g, b]``)
and the float costs are scaled by a power of two and rounded UP, the budget rounded DOWN, so an
allocation the integer model accepts never exceeds the float budget (it is checked again with the
floats afterwards).

The objective ``sum_g w_g * bits_g`` has float weights (or, with ``values``, any table
``sum_g V[g][bits_g]``: a per-bit-width value per group, as sensitivity allocators such as
HAWQ's need; it uses the same 0/1 variables as latency); CP-SAT needs integers, so each weight is
scaled to ``round(w_g / max(w) * weight_resolution)``: the resolution is ``1 / weight_resolution``
of the largest weight. The optimum found is then within
``max(w) / weight_resolution * 0.5 * sum_g (max bits_g - min bits_g)`` of the float optimum
(the rounding error of each weight is at most 0.5, and only bit differences between two plans
count). Weights should be normalised in the log domain by the caller (METHOD.md section 2); the
scaling here is invariant to a common factor.

Three lexicographic stages, each a CP-SAT solve on the same model:

1. maximise the integer objective;
2. only if stage 1 proved optimality: keep the objective at its optimum and maximise the size
   used, so that spare budget is not left on the table;
3. only if stage 2 proved optimality, a final tie-break: keep both at their optimum and take the
   lexicographically largest bit vector (more bits for earlier groups). This is a satisfaction
   problem searched depth-first in a fixed order (groups in order, largest value first) with
   presolve off, so its first solution is exactly the lexicographically largest one, a function
   of the input alone. It is usually instant, but the search can be long on large models with
   two binding budgets, so it is capped at ``_TIE_BREAK_DTIME`` units of CP-SAT's
   deterministic time (an operation count, about a second); past the cap the stage-2 plan is
   kept.

Determinism: every stage runs CP-SAT with one worker and a fixed seed, whose search does not
depend on thread timing, and the only cap that is not wall-clock time is counted in operations;
so the same input gives the same bits on every call. One worker is also the fastest setting
measured for this model (stage 1 on 1024 groups x 7 bit-widths, 2 cores: 0.13 s with one worker,
0.38 s with 8, 7-13 s with the deterministic parallel mode ``interleave_search``).
A solve cut short by ``time_limit_s`` (status ``FEASIBLE``, or a stage 2/3 cut short) depends on
the machine's speed and is therefore not reproducible; ``gap`` says how far from optimal it
may be.

Reference relaxation (``solve_relaxed``)
----------------------------------------
What the authors' code does (METHOD.md section 2): SLSQP on the continuous relaxation, then
rounding to nearest (which can break the budget) or an exhaustive floor/ceil search.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from operator import index

from ompq_ext.errors import InfeasibleBudgetError, OmpqError, OmpqValueError

MAX_BITS = 16
_INT64_SAFE = 2**62  # CP-SAT works in int64; keep every sum well below its limit
_LATENCY_SCALE_BITS = 40  # latency costs are integers below 2**40 after scaling
_TIE_BREAK_DTIME = 1.0  # cap of the lexicographic stage, in CP-SAT deterministic time


@dataclass(frozen=True)
class GroupSpec:
    """One group of layers that share a bit-width."""

    name: str
    params: int  # weight parameters of the group (a shared weight counted once), > 0
    macs: int  # MACs per sample of all layers in the group, for BOPs, >= 0
    weight: float  # objective weight, finite, >= 0
    bits: tuple[int, ...]  # allowed bit-widths (a single value = fixed), each in 1..16
    act_bits: int = 8  # activation bits, for BOPs


@dataclass
class Allocation:
    """A bit-width per group and what it costs."""

    bits: list[int]
    status: str  # "OPTIMAL", "FEASIBLE" (time limit hit) or "RELAXED" (solve_relaxed)
    objective: float  # sum_g weight_g * bits_g with the float weights
    bound: float  # best proven upper bound on the objective (== objective when OPTIMAL)
    gap: float  # (bound - objective) / max(|bound|, 1e-12); 0 when OPTIMAL
    size_bits: int  # sum_g params_g * bits_g + other_bits
    bops: int  # sum_g macs_g * bits_g * act_bits_g
    latency: float | None  # sum of latency table entries, if a table was given
    solve_time_s: float


# ----------------------------------------------------------------------------------------------
# Validation and plain arithmetic


def _as_int(value, what):
    try:
        return index(value)
    except TypeError:
        raise OmpqValueError(f"{what} must be an integer, got {value!r}") from None


def _validate_groups(groups: Sequence[GroupSpec]) -> list[tuple[int, ...]]:
    """Check every group; return each group's allowed bits, sorted and de-duplicated."""
    if len(groups) == 0:
        raise OmpqValueError("no groups to allocate bits to; pass at least one GroupSpec")
    seen = set()
    allowed = []
    for g in groups:
        where = f"group {g.name!r}"
        if g.name in seen:
            raise OmpqValueError(f"{where} appears twice; group names must be unique")
        seen.add(g.name)
        if len(g.bits) == 0:
            raise OmpqValueError(f"{where} has an empty set of allowed bits; give at least one")
        bits = tuple(sorted({_as_int(b, f"{where}: bit-width") for b in g.bits}))
        if bits[0] < 1 or bits[-1] > MAX_BITS:
            raise OmpqValueError(
                f"{where}: bit-widths must be in 1..{MAX_BITS}, got {list(g.bits)}"
            )
        if _as_int(g.params, f"{where}: params") <= 0:
            raise OmpqValueError(f"{where}: params must be > 0, got {g.params}")
        if _as_int(g.macs, f"{where}: macs") < 0:
            raise OmpqValueError(f"{where}: macs must be >= 0, got {g.macs}")
        if not 1 <= _as_int(g.act_bits, f"{where}: act_bits") <= 32:
            raise OmpqValueError(f"{where}: act_bits must be in 1..32, got {g.act_bits}")
        try:
            w = float(g.weight)
        except (TypeError, ValueError):
            w = math.nan
        if not math.isfinite(w) or w < 0:
            raise OmpqValueError(f"{where}: weight must be finite and >= 0, got {g.weight}")
        allowed.append(bits)
    return allowed


def _check_budget(value, what, *, integer=True):
    if value is None:
        return None
    value = _as_int(value, what) if integer else float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise OmpqValueError(f"{what} must be finite and >= 0, got {value}")
    return value


def _validate_budgets(size_budget, bops_budget, latency, latency_budget, other_bits):
    size_budget = _check_budget(size_budget, "size_budget_bits")
    bops_budget = _check_budget(bops_budget, "bops_budget")
    latency_budget = _check_budget(latency_budget, "latency_budget", integer=False)
    other_bits = _check_budget(other_bits, "other_bits")
    if size_budget is None and bops_budget is None and latency_budget is None:
        raise OmpqValueError(
            "no budget given; pass size_budget_bits, bops_budget or latency_budget"
        )
    if latency_budget is not None and latency is None:
        raise OmpqValueError("latency_budget needs a latency table (latency=...)")
    return size_budget, bops_budget, latency_budget, other_bits


def _validate_options(time_limit_s, weight_resolution, num_groups) -> int:
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise OmpqValueError(f"time_limit_s must be finite and > 0, got {time_limit_s}")
    weight_resolution = _as_int(weight_resolution, "weight_resolution")
    if not 1 <= weight_resolution * MAX_BITS * num_groups <= _INT64_SAFE:
        raise OmpqValueError(
            "weight_resolution must be >= 1 and small enough for 64-bit integers, "
            f"got {weight_resolution}"
        )
    return weight_resolution


def _per_bit_table(groups, allowed, rows, name: str, what: str, *, nonnegative: bool) -> list[dict[int, float]]:
    """Check a table given as one mapping bits -> number per group (``name``: how the argument is
    called in messages, ``what``: what one entry is); return {bit: float} for each group's allowed bits."""
    if len(rows) != len(groups):
        raise OmpqValueError(
            f"{name} has {len(rows)} entries for {len(groups)} groups; "
            f"give one mapping bits -> {what} per group, in group order"
        )
    table = []
    for g, bits, row in zip(groups, allowed, rows):
        if not isinstance(row, Mapping):
            raise OmpqValueError(f"group {g.name!r}: {name} entry must be a mapping bits -> {what}")
        missing = [b for b in bits if b not in row]
        if missing:
            raise OmpqValueError(
                f"group {g.name!r}: {name} has no entry for bits {missing}; "
                f"give a {what} for every allowed bit-width"
            )
        try:
            row = {b: float(row[b]) for b in bits}
        except (TypeError, ValueError):
            raise OmpqValueError(f"group {g.name!r}: {what}s must be numbers") from None
        if not all(math.isfinite(v) and (v >= 0 or not nonnegative) for v in row.values()):
            raise OmpqValueError(f"group {g.name!r}: {what}s must be finite{' and >= 0' if nonnegative else ''}")
        table.append(row)
    return table


def _latency_table(groups, allowed, latency) -> list[dict[int, float]]:
    """The latency table: a finite cost >= 0 for each group's every allowed bit-width."""
    return _per_bit_table(groups, allowed, latency, "latency table", "latency cost", nonnegative=True)


def _value_table(groups, allowed, values) -> list[dict[int, float]]:
    """The objective table: a finite value for each group's every allowed bit-width."""
    return _per_bit_table(groups, allowed, values, "values", "value", nonnegative=False)


def _integer_values(table, weight_resolution):
    """Integer objective table for CP-SAT: each row shifted by its minimum (one value per group
    is chosen, so a constant per group changes no decision), then scaled like the weights.
    Returns (integer table, scale, row minimums)."""
    mins = [min(row.values()) for row in table]
    top = max(v - m for row, m in zip(table, mins) for v in row.values())
    scale = weight_resolution / top if top > 0 else 0.0
    ints = [{b: round((v - m) * scale) for b, v in row.items()} for row, m in zip(table, mins)]
    return ints, scale, mins


def _size(groups, bits, other_bits=0) -> int:
    return sum(g.params * b for g, b in zip(groups, bits)) + other_bits


def _bops(groups, bits) -> int:
    return sum(g.macs * g.act_bits * b for g, b in zip(groups, bits))


def _objective(groups, bits) -> float:
    return math.fsum(float(g.weight) * b for g, b in zip(groups, bits))


def _mib(size_bits) -> str:
    return f"{size_bits / 8 / 2**20:.4g} MiB"


def integer_weights(groups: Sequence[GroupSpec], weight_resolution: int) -> list[int]:
    """The weights CP-SAT sees: round(w / max(w) * weight_resolution); all 0 if max(w) is 0."""
    top = max(float(g.weight) for g in groups)
    if top == 0:
        return [0] * len(groups)
    return [round(float(g.weight) / top * weight_resolution) for g in groups]


def _scaled_latency(table, budget):
    """Integer costs (rounded up) and budget (rounded down) on a common power-of-two scale."""
    top = max([budget] + [c for row in table for c in row.values()])
    scale = Fraction(2) ** (_LATENCY_SCALE_BITS - math.frexp(top)[1]) if top > 0 else Fraction(1)
    costs = [{b: math.ceil(Fraction(c) * scale) for b, c in row.items()} for row in table]
    return costs, math.floor(Fraction(budget) * scale)


# ----------------------------------------------------------------------------------------------
# Budgets that no allocation can meet, even alone


def _check_each_budget_alone(groups, allowed, other_bits, size_budget, bops_budget,
                             table, latency_budget, int_latency):
    lowest = [bits[0] for bits in allowed]
    if size_budget is not None:
        smallest = _size(groups, lowest, other_bits)
        if smallest > size_budget:
            raise InfeasibleBudgetError(
                f"size budget {_mib(size_budget)} ({size_budget} bits) is below the smallest "
                f"achievable size {_mib(smallest)} ({smallest} bits) with every layer at its "
                "lowest allowed bits; raise the budget or allow fewer bits",
                smallest=smallest,
            )
    if bops_budget is not None:
        smallest = _bops(groups, lowest)
        if smallest > bops_budget:
            raise InfeasibleBudgetError(
                f"BOPs budget {bops_budget:.4g} ({bops_budget} BOPs) is below the smallest "
                f"achievable {smallest:.4g} BOPs ({smallest}) with every layer at its lowest "
                "allowed bits; raise the budget, allow fewer bits or lower the activation bits",
                smallest=smallest,
            )
    if latency_budget is not None:
        smallest = math.fsum(min(row.values()) for row in table)
        costs, budget = int_latency
        if smallest > latency_budget or sum(min(row.values()) for row in costs) > budget:
            raise InfeasibleBudgetError(
                f"latency budget {latency_budget:.6g} is below the smallest achievable latency "
                f"{smallest:.6g} (every layer at its fastest allowed bit-width, costs rounded up "
                f"to 2**-{_LATENCY_SCALE_BITS} of the largest); raise the budget or allow "
                "other bits",
                smallest=smallest,
            )


# ----------------------------------------------------------------------------------------------
# The CP-SAT model


class _Model:
    """The CP-SAT model: bit variables, budget constraints, and the expressions the stages use."""

    def __init__(self, groups, allowed, other_bits, size_budget, bops_budget, int_latency):
        from ortools.sat.python import cp_model

        self.cp_model = cp_model
        m = self.model = cp_model.CpModel()
        self.lowest = [bits[0] for bits in allowed]
        self.bits = [
            m.new_int_var_from_domain(cp_model.Domain.from_values(bits), f"bits[{g.name}]")
            for g, bits in zip(groups, allowed)
        ]
        self.params = [g.params for g in groups]
        self.names = [g.name for g in groups]
        self.allowed = allowed
        self._chosen = None
        self.size = cp_model.LinearExpr.weighted_sum(self.bits, self.params)
        # Always checked: stage 2 maximises the size even when it has no budget.
        self._add_at_most(self.size, math.inf if size_budget is None else size_budget - other_bits,
                          self.params, allowed, "size")
        if bops_budget is not None:
            coef = [g.macs * g.act_bits for g in groups]
            bops = cp_model.LinearExpr.weighted_sum(self.bits, coef)
            self._add_at_most(bops, bops_budget, coef, allowed, "BOPs")
        if int_latency is not None:
            self._add_latency(groups, allowed, *int_latency)

    def _add_at_most(self, expr, limit, coef, allowed, what):
        largest = sum(c * bits[-1] for c, bits in zip(coef, allowed))
        if largest > _INT64_SAFE:
            raise OmpqValueError(
                f"the {what} of this model ({largest}) is too large for the solver's 64-bit "
                "integers; express it in coarser units"
            )
        if limit < largest:  # otherwise the budget cannot bind
            self.model.add(expr <= limit)

    def chosen(self):
        """0/1 variables is[g, b], exactly one per group, with bits[g] = sum_b b * is[g, b]."""
        if self._chosen is None:
            m = self.model
            self._chosen = []
            for name, var, bits in zip(self.names, self.bits, self.allowed):
                row = [m.new_bool_var(f"is[{name},{b}]") for b in bits]
                m.add_exactly_one(row)
                m.add(var == self.cp_model.LinearExpr.weighted_sum(row, bits))
                self._chosen.append(row)
        return self._chosen

    def table_expr(self, table):
        """sum_g table[g][bits_g] as a linear expression over the 0/1 variables."""
        terms, coefs = [], []
        for row_vars, bits, row in zip(self.chosen(), self.allowed, table):
            terms += row_vars
            coefs += [row[b] for b in bits]
        return self.cp_model.LinearExpr.weighted_sum(terms, coefs)

    def _add_latency(self, groups, allowed, costs, budget):
        self.model.add(self.table_expr(costs) <= budget)

    def run(self, seconds, *, lexicographic=False):
        """One CP-SAT solve, single worker and fixed seed; returns (status name, solver)."""
        solver = self.cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
        solver.parameters.max_time_in_seconds = max(seconds, 1e-3)
        if lexicographic:
            # Plain depth-first search in the decision order: the first solution is the
            # lexicographically largest. Presolve and symmetry breaking are off because they
            # may drop solutions that are not needed for optimality, including that one.
            solver.parameters.search_branching = self.cp_model.FIXED_SEARCH
            solver.parameters.cp_model_presolve = False
            solver.parameters.symmetry_level = 0
            solver.parameters.max_deterministic_time = _TIE_BREAK_DTIME
        else:
            # Skips presolve's dual reductions, which cost more than they save on this model
            # (measured: 1024 groups x 7 bits, 0.2 s instead of 0.9 s).
            solver.parameters.keep_all_feasible_solutions_in_presolve = True
        status = solver.solve(self.model)
        return solver.status_name(status), solver

    def values(self, solver):
        return [int(solver.value(v)) for v in self.bits]


def _solve_stages(mdl, objective, int_objective, deadline):
    """Run the three stages on the integer ``objective`` expression (``int_objective(bits)`` is
    its exact value for a bit vector); return (status of stage 1, bits or None, integer bound)."""
    cp_model = mdl.cp_model
    m = mdl.model

    m.maximize(objective)
    for var, b in zip(mdl.bits, mdl.lowest):  # lowest bits meet the size and BOPs budgets
        m.add_hint(var, b)
    status, solver = mdl.run(deadline - time.perf_counter())
    if status not in ("OPTIMAL", "FEASIBLE"):
        return status, None, None
    bits = mdl.values(solver)
    if status != "OPTIMAL":
        return status, bits, solver.best_objective_bound
    best = int_objective(bits)  # exact, unlike solver.objective_value

    # Stage 2: objective fixed at its optimum, use as much of the size as possible.
    m.add(objective >= best)
    m.maximize(mdl.size)
    m.clear_hints()
    for var, b in zip(mdl.bits, bits):
        m.add_hint(var, b)
    status, solver = mdl.run(deadline - time.perf_counter())
    if status != "OPTIMAL":
        return "OPTIMAL", (mdl.values(solver) if status == "FEASIBLE" else bits), best
    bits = mdl.values(solver)

    # Stage 3: both fixed, the lexicographically largest bit vector (if found within its cap).
    m.add(mdl.size == sum(p * b for p, b in zip(mdl.params, bits)))
    m.clear_objective()
    m.clear_hints()
    m.add_decision_strategy(mdl.bits, cp_model.CHOOSE_FIRST, cp_model.SELECT_MAX_VALUE)
    status, solver = mdl.run(deadline - time.perf_counter(), lexicographic=True)
    if status in ("OPTIMAL", "FEASIBLE"):
        bits = mdl.values(solver)
    return "OPTIMAL", bits, best


def _no_solution_error(status, size_budget, bops_budget, latency_budget, time_limit_s):
    """The error for a solve that returned no allocation."""
    if status == "INFEASIBLE":  # each budget alone was checked before: only their combination
        given = [f"{what} {value}" for what, value in (
            ("size budget", None if size_budget is None else
             f"{_mib(size_budget)} ({size_budget} bits)"),
            ("BOPs budget", bops_budget),
            ("latency budget", latency_budget),
        ) if value is not None]
        return InfeasibleBudgetError(
            f"no allocation meets the {' and the '.join(given)} together, although each "
            "alone can be met; raise one of them or allow fewer bits"
        )
    if status == "UNKNOWN":
        return OmpqError(
            f"CP-SAT found no allocation within time_limit_s={time_limit_s}; "
            "give it a larger time_limit_s"
        )
    return OmpqError(f"internal error: CP-SAT returned status {status}")


def _float_bound(groups, allowed, weights, int_bound, weight_resolution):
    """An upper bound on the float objective from a bound on the integer one."""
    top = max(float(g.weight) for g in groups)
    if top == 0:
        return 0.0
    c = weight_resolution / top
    slack = math.fsum(
        max((c * float(g.weight) - wi) * b for b in bits)
        for g, bits, wi in zip(groups, allowed, weights)
    )
    return (int_bound + slack) / c


def _float_value_bound(table, ints, scale, mins, int_bound):
    """An upper bound on sum_g table[g][bits_g] from a bound on the integer table's sum."""
    if scale == 0:
        return math.fsum(mins)
    slack = math.fsum(max(scale * (v - m) - row_int[b] for b, v in row.items())
                      for row, row_int, m in zip(table, ints, mins))
    return (int_bound + slack) / scale + math.fsum(mins)


def _verify(groups, allowed, bits, other_bits, size_budget, bops_budget, table, latency_budget):
    """Exact check of the returned plan; a failure here is a bug, never a user error."""
    problems = [g.name for g, b, ok in zip(groups, bits, allowed) if b not in ok]
    size = _size(groups, bits, other_bits)
    if size_budget is not None and size > size_budget:
        problems.append(f"size {size} > {size_budget}")
    bops = _bops(groups, bits)
    if bops_budget is not None and bops > bops_budget:
        problems.append(f"BOPs {bops} > {bops_budget}")
    lat = None if table is None else math.fsum(row[b] for row, b in zip(table, bits))
    if latency_budget is not None and lat > latency_budget:
        problems.append(f"latency {lat!r} > {latency_budget!r}")
    if problems:
        raise OmpqError(f"internal error: the solver returned a plan that breaks {problems}")
    return size, bops, lat


def solve(
    groups: Sequence[GroupSpec],
    *,
    size_budget_bits: int | None = None,
    other_bits: int = 0,
    bops_budget: int | None = None,
    latency: Sequence[Mapping[int, float]] | None = None,
    latency_budget: float | None = None,
    values: Sequence[Mapping[int, float]] | None = None,
    time_limit_s: float = 30.0,
    weight_resolution: int = 10**7,
) -> Allocation:
    """Exact bit allocation: maximise sum_g weight_g * bits_g under every given budget.

    ``values``: one mapping bit-width -> value per group (finite, any sign); the objective is
    then sum_g values[g][bits_g] and the groups' weights are ignored. A cost to minimise (a
    sensitivity, a loss increase) is given as its negative.

    ``size_budget_bits`` counts ``other_bits`` (parameters outside the groups) too. ``latency``
    is one mapping bit-width -> cost per group; ``latency_budget`` bounds their sum. At least
    one budget is required. Raises ``InfeasibleBudgetError`` when no allocation meets the
    budgets, ``OmpqError`` when no allocation was found within ``time_limit_s``.
    See the module docstring for the model, the weight resolution and determinism.
    """
    start = time.perf_counter()
    allowed = _validate_groups(groups)
    size_budget, bops_budget, latency_budget, other_bits = _validate_budgets(
        size_budget_bits, bops_budget, latency, latency_budget, other_bits)
    weight_resolution = _validate_options(time_limit_s, weight_resolution, len(groups))
    table = None if latency is None else _latency_table(groups, allowed, latency)
    int_latency = None if latency_budget is None else _scaled_latency(table, latency_budget)
    _check_each_budget_alone(groups, allowed, other_bits, size_budget, bops_budget,
                             table, latency_budget, int_latency)

    value_table = None if values is None else _value_table(groups, allowed, values)

    mdl = _Model(groups, allowed, other_bits, size_budget, bops_budget, int_latency)
    if value_table is None:
        weights = integer_weights(groups, weight_resolution)
        expr = mdl.cp_model.LinearExpr.weighted_sum(mdl.bits, weights)
        status, bits, int_bound = _solve_stages(
            mdl, expr, lambda bits: sum(w * b for w, b in zip(weights, bits)), start + time_limit_s)
    else:
        ints, scale, mins = _integer_values(value_table, weight_resolution)
        status, bits, int_bound = _solve_stages(
            mdl, mdl.table_expr(ints), lambda bits: sum(row[b] for row, b in zip(ints, bits)),
            start + time_limit_s)
    if bits is None:
        raise _no_solution_error(status, size_budget, bops_budget, latency_budget, time_limit_s)

    size, bops, lat = _verify(groups, allowed, bits, other_bits, size_budget, bops_budget,
                              table, latency_budget)
    if value_table is None:
        objective = _objective(groups, bits)
    else:
        objective = math.fsum(row[b] for row, b in zip(value_table, bits))
    if status == "OPTIMAL":
        bound, gap = objective, 0.0
    else:
        if value_table is None:
            int_to_float = _float_bound(groups, allowed, weights, int_bound, weight_resolution)
        else:
            int_to_float = _float_value_bound(value_table, ints, scale, mins, int_bound)
        bound = max(objective, int_to_float)
        gap = (bound - objective) / max(abs(bound), 1e-12)
    return Allocation(bits=bits, status=status, objective=objective, bound=bound, gap=gap,
                      size_bits=size, bops=bops, latency=lat,
                      solve_time_s=time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# The reference: continuous relaxation, then rounding


def _nearest_allowed(x, bits):
    """Round half to even (the reference's np.around), then the closest allowed value."""
    r = round(float(x))
    return min(bits, key=lambda b: (abs(b - r), b))


def _floor_ceil(x, bits):
    """The allowed values just below and just above x (equal when x is allowed or out of range)."""
    lower = max([b for b in bits if b <= x + 1e-9] or [bits[0]])
    upper = min([b for b in bits if b >= x - 1e-9] or [bits[-1]])
    return upper, lower


def solve_relaxed(
    groups: Sequence[GroupSpec],
    *,
    size_budget_bits: int,
    other_bits: int = 0,
    rounding: str = "nearest",
) -> Allocation:
    """The reference code's allocation (METHOD.md section 2), kept as a baseline.

    Maximises sum_g w_g * x_g over real x_g in [min bits, max bits] under the size budget with
    scipy's SLSQP, started from the largest bits, constraint in MiB; then rounds:

    - ``"nearest"``: each x_g to the nearest allowed bit-width. This can exceed the budget;
      the result is returned anyway and ``size_bits`` shows by how much.
    - ``"floor_ceil"``: every combination of the allowed values just below/above each x_g
      (2**L leaves, L <= 20), keeping, like the reference's DFS_bit, the leaf whose size is
      closest to the relaxed solution's size from below (here also capped by the budget).

    Status is ``"RELAXED"``; ``bound`` is the relaxed objective.
    """
    import numpy as np
    from scipy.optimize import minimize

    start = time.perf_counter()
    allowed = _validate_groups(groups)
    budget = _check_budget(size_budget_bits, "size_budget_bits")
    other_bits = _check_budget(other_bits, "other_bits")
    if budget is None:
        raise OmpqValueError("solve_relaxed needs size_budget_bits")
    if rounding not in ("nearest", "floor_ceil"):
        raise OmpqValueError(f"rounding must be 'nearest' or 'floor_ceil', got {rounding!r}")
    _check_each_budget_alone(groups, allowed, other_bits, budget, None, None, None, None)

    w = np.array([float(g.weight) for g in groups])
    params = np.array([float(g.params) for g in groups])
    lo = np.array([bits[0] for bits in allowed], dtype=float)
    hi = np.array([bits[-1] for bits in allowed], dtype=float)
    mib = 8.0 * 2**20
    result = minimize(
        lambda x: -w @ x,
        x0=hi,
        jac=lambda x: -w,
        method="SLSQP",
        bounds=list(zip(lo, hi)),
        constraints={"type": "ineq", "fun": lambda x: (budget - other_bits - params @ x) / mib},
    )
    x = np.clip(result.x, lo, hi)

    if rounding == "nearest":
        bits = [_nearest_allowed(xg, ok) for xg, ok in zip(x, allowed)]
    else:
        if len(groups) > 20:
            raise OmpqValueError(
                f"rounding='floor_ceil' enumerates 2**L leaves and needs L <= 20 groups, "
                f"got {len(groups)}"
            )
        limit = min(float(params @ x) + other_bits, budget)
        best, bits = None, None
        choices = [dict.fromkeys(_floor_ceil(xg, ok)) for xg, ok in zip(x, allowed)]
        for leaf in itertools.product(*choices):
            size = _size(groups, leaf, other_bits)
            if size <= limit and (best is None or size > best):
                best, bits = size, list(leaf)
        if bits is None:  # no leaf fits (SLSQP ended outside the budget): lowest bits fit
            bits = [ok[0] for ok in allowed]

    objective = _objective(groups, bits)
    bound = float(w @ x)
    return Allocation(
        bits=[int(b) for b in bits], status="RELAXED", objective=objective, bound=bound,
        gap=(bound - objective) / max(abs(bound), 1e-12),
        size_bits=_size(groups, bits, other_bits), bops=_bops(groups, bits), latency=None,
        solve_time_s=time.perf_counter() - start,
    )
