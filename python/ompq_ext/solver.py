"""Bit allocation: the exact knapsack for one budget, the exact CP-SAT model, and the reference's relaxation.

One budget (the common case: a model size), activation bits fixed: the C++ core's exact multiple-choice
knapsack (``cpp/include/ompq/knapsack.hpp``: dynamic programming from the LP solution with bounds) returns
what the three CP-SAT stages below return (largest objective, then size used, then the lexicographically
largest bits), in milliseconds at 1024 groups (docs/BENCHMARKS.md); tests compare the two on random
instances. Several budgets: the knapsack's answer under one of them alone is the answer under all when it
meets the others (each stage then chooses from a larger set and its choice is still allowed), which is
often the case where one budget binds; two budgets that both bind go to the core's two-budget knapsack
(``solve_knapsack2``) within ``KNAPSACK2_MAX_STATES`` states. Past its state or time limit, or with more
budgets, CP-SAT.

Exact model (``solve``)
-----------------------
One integer variable per group, ``bits[g]``, whose domain is the group's allowed bit-widths.
Every budget is a ``Constraint`` (``ompq_ext.constraints``), one linear constraint in exact integers:

    size     sum_g params_g * bits_g + other_bits        <= size limit
    BOPs     sum_g macs_g * act_bits_g * bits_g          <= BOPs limit
    latency  sum_g sum_b L[g][b] * is[g, b]              <= latency budget

A constraint whose cost is linear in the bits (size, BOPs) is written over ``bits[g]``; any other
(latency) over 0/1 variables ``is[g, b]`` (exactly one per group, ``bits_g = sum_b b * is[g, b]``).

Activation bits as decisions (a group's ``act_choices``): then each group also has ``act[g]`` and 0/1
variables ``pair[g, b, a]`` (exactly one per group, ``bits_g = sum b * pair``, ``act_g = sum a * pair``);
a constraint whose cost depends on the activation bits (BOPs: ``macs_g * b * a``, bilinear) is written
over the pairs, the others as above. The objective gains ``sum_g act_values[g][act_g]`` (with weights
instead of values: ``sum_g w_g * (bits_g + act_g)``).
Float costs are scaled by a power of two and rounded UP, the limit rounded DOWN, so an allocation
the integer model accepts never exceeds the float budget (it is checked again with the floats
afterwards). Each constraint is visited once in each of: the check that it can be met alone, the
model, and the verification of the returned plan.

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
   lexicographically largest bit vector (more bits for earlier groups), a function of the input
   alone. Two searches prove it, taking turns (``_TIE_BREAK_TURNS``): a depth-first search in a fixed
   order (groups in order, largest value first) with presolve off, whose first solution is exactly
   that one (instant where many plans tie, but long on some large models with two binding budgets:
   1024 groups, past its cap on 3 of 10 instances), and asking for a solution lexicographically
   larger than the last one found until CP-SAT proves there is none (at once where the optimum is
   unique: 0.2-0.5 s on those instances). Capped at ``_TIE_BREAK_DTIME`` units of CP-SAT's
   deterministic time in all (an operation count, about a second); past the cap the last plan found
   is kept.

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
from dataclasses import dataclass, field
from fractions import Fraction
from operator import index

from .constraints import BopsConstraint, Constraint, LatencyConstraint, SizeConstraint
from .constraints.base import FLOAT_SCALE_BITS, check_limit, per_bit_table
from .errors import InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError

MAX_BITS = 16
_INT64_SAFE = 2**62  # CP-SAT works in int64; keep every sum well below its limit
_TIE_BREAK_DTIME = 1.0  # cap of the lexicographic stage, in CP-SAT deterministic time
# The tie-break's turns: (depth-first search?, share of the cap); then "a larger one" until the cap.
_TIE_BREAK_TURNS = ((True, 0.05), (False, 0.6), (True, 0.25)) + ((False, 1.0),) * 64


@dataclass(frozen=True)
class GroupSpec:
    """One group of layers that share a bit-width."""

    name: str
    params: int  # weight parameters of the group (a shared weight counted once), > 0
    macs: int  # MACs per sample of all layers in the group, for BOPs, >= 0
    weight: float  # objective weight, finite, >= 0
    bits: tuple[int, ...]  # allowed bit-widths (a single value = fixed), each in 1..16
    act_bits: int = 8  # activation bits, for BOPs
    layers: tuple[str, ...] = ()  # its layers' names, for per-layer tables such as latency; () means (name,)
    act_choices: tuple[int, ...] = ()  # activation bit-widths to choose from (then act_bits is unused); () fixed


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
    latency: float | None  # sum of the latency table's entries, if a table was given
    solve_time_s: float
    costs: dict[str, float] = field(default_factory=dict)  # each constraint's kind -> the plan's cost
    act_bits: list[int] = field(default_factory=list)  # each group's activation bits (chosen, or its fixed ones)
    engine: str = "cp-sat"  # what found it: "knapsack" (the core's exact one-budget solver) or "cp-sat"


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
        if not all(1 <= _as_int(a, f"{where}: act_choices") <= 32 for a in g.act_choices):
            raise OmpqValueError(f"{where}: act_choices must be in 1..32, got {list(g.act_choices)}")
        try:
            w = float(g.weight)
        except (TypeError, ValueError):
            w = math.nan
        if not math.isfinite(w) or w < 0:
            raise OmpqValueError(f"{where}: weight must be finite and >= 0, got {g.weight}")
        allowed.append(bits)
    return allowed


def _act_allowed(groups) -> list[tuple[int, ...]]:
    """Each group's activation bits: its choices, sorted, or its fixed ``act_bits``."""
    return [tuple(sorted({int(a) for a in g.act_choices})) or (int(g.act_bits),) for g in groups]


def _keyword_constraints(size_budget, bops_budget, latency, latency_budget, other_bits) -> list[Constraint]:
    """The constraints that solve()'s budget keywords stand for, each checked under its keyword's name."""
    constraints = []
    if size_budget is not None:
        constraints.append(SizeConstraint(check_limit(size_budget, "size_budget_bits"), other_bits))
    if bops_budget is not None:
        constraints.append(BopsConstraint(check_limit(bops_budget, "bops_budget")))
    if latency_budget is not None:
        check_limit(latency_budget, "latency_budget", integer=False)
        if latency is None:
            raise OmpqValueError("latency_budget needs a latency table (latency=...)")
        constraints.append(LatencyConstraint(latency, latency_budget))
    return constraints


def _as_list(constraints) -> list:
    """A constraint alone, a sequence of them, or None."""
    if isinstance(constraints, Constraint):
        return [constraints]
    try:
        return list(constraints or ())
    except TypeError:
        raise OmpqTypeError(f"constraints must be a list of Constraint objects, got {type(constraints).__name__}") from None


def _validate_constraints(constraints) -> list[Constraint]:
    if not constraints:
        raise OmpqValueError("no budget given; pass constraints, or size_budget_bits, bops_budget or latency_budget")
    kinds = set()
    for c in constraints:
        if not isinstance(c, Constraint):
            raise OmpqTypeError(
                f"constraints must be ompq_ext.constraints.Constraint objects, got {type(c).__name__}")
        if c.kind in kinds:
            raise OmpqValueError(f"two {c.kind} budgets given; give at most one of each kind")
        if not isinstance(getattr(c, "limit", None), (int, float)) or isinstance(c.limit, bool):
            raise OmpqTypeError(f"the {type(c).__name__} constraint has no numeric limit")
        kinds.add(c.kind)
    return constraints


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


def _value_table(groups, allowed, values) -> list[dict[int, float]]:
    """The objective table: a finite value for each group's every allowed bit-width."""
    return per_bit_table(groups, allowed, values, "values", "value", nonnegative=False)


def _integer_values(table, weight_resolution):
    """Integer objective table for CP-SAT: each row shifted by its minimum (one value per group
    is chosen, so a constant per group changes no decision), then scaled like the weights.
    Returns (integer table, scale, row minimums). A spread so small that its scale overflows (a
    subnormal float) is no spread: every choice ties."""
    mins = [min(row.values()) for row in table]
    top = max(v - m for row, m in zip(table, mins) for v in row.values())
    scale = weight_resolution / top if top > 0 else 0.0
    if not math.isfinite(scale):
        scale = 0.0
    ints = [{b: round((v - m) * scale) for b, v in row.items()} for row, m in zip(table, mins)]
    return ints, scale, mins


def _size(groups, bits, other_bits=0) -> int:
    return sum(g.params * b for g, b in zip(groups, bits)) + other_bits


def _bops(groups, bits, acts=None) -> int:
    acts = acts or [g.act_bits for g in groups]
    return sum(g.macs * a * b for g, b, a in zip(groups, bits, acts))


def _objective(groups, bits) -> float:
    return math.fsum(float(g.weight) * b for g, b in zip(groups, bits))


def integer_weights(groups: Sequence[GroupSpec], weight_resolution: int) -> list[int]:
    """The weights CP-SAT sees: round(w / max(w) * weight_resolution); all 0 if max(w) is 0."""
    top = max(float(g.weight) for g in groups)
    if top == 0:
        return [0] * len(groups)
    return [round(float(g.weight) / top * weight_resolution) for g in groups]


class _Costs:
    """One constraint on this problem: its cost table, and the integers the CP-SAT model uses
    (exact for integer costs; float costs scaled by a power of two, rounded up, the limit down)."""

    def __init__(self, constraint: Constraint, groups, allowed, act_allowed=None):
        self.constraint = constraint
        # joint: activation bits are decisions and this cost depends on them: rows keyed by (bits, act bits)
        self.joint = act_allowed is not None and constraint.uses_act_bits
        if self.joint:
            self.table = constraint.joint_costs(groups, allowed, act_allowed)
            keys = [[(b, a) for b in bits for a in acts] for bits, acts in zip(allowed, act_allowed)]
        else:
            self.table = constraint.costs(groups, allowed)
            keys = allowed
        for g, want, row in zip(groups, keys, self.table):
            if not all(k in row and isinstance(row[k], (int, float)) for k in want):
                raise OmpqValueError(f"the {constraint.kind} constraint gives group {g.name!r} no numeric cost for "
                                     f"some of its bits {list(want)}")
        self.coefficients = None if self.joint else constraint.coefficients(groups)
        limit = constraint.limit - constraint.fixed_cost
        if isinstance(limit, int) and all(isinstance(c, int) for row in self.table for c in row.values()):
            self.int_table, self.int_limit = self.table, limit
        else:
            top = max([constraint.limit] + [c for row in self.table for c in row.values()])
            scale = Fraction(2) ** (FLOAT_SCALE_BITS - math.frexp(top)[1]) if top > 0 else Fraction(1)
            self.int_table = [{b: math.ceil(Fraction(c) * scale) for b, c in row.items()} for row in self.table]
            self.int_limit = math.floor(Fraction(limit) * scale)
            self.coefficients = None  # scaled: no longer exactly c_g * bits

    def of(self, bits, acts=None):
        """The plan's cost, fixed cost included (float costs summed exactly rounded)."""
        keys = list(zip(bits, acts)) if self.joint else bits
        values = [row[k] for row, k in zip(self.table, keys)]
        if all(isinstance(v, int) for v in values):
            return sum(values) + self.constraint.fixed_cost
        return math.fsum(values + [self.constraint.fixed_cost])

    def within(self, bits) -> bool:
        """Whether these bits meet the constraint as the CP-SAT model states it (scaled integers)."""
        return sum(row[b] for row, b in zip(self.int_table, bits)) <= self.int_limit

    def check_alone(self):
        """Raise the constraint's own error if no allocation meets it, even alone."""
        cheapest = [min(row, key=row.get) for row in self.table]
        smallest = self.of(*zip(*cheapest)) if self.joint else self.of(cheapest)
        if smallest > self.constraint.limit or sum(min(row.values()) for row in self.int_table) > self.int_limit:
            raise self.constraint.infeasible(smallest)


# ----------------------------------------------------------------------------------------------
# The CP-SAT model


class _Model:
    """The CP-SAT model: bit variables, one constraint per budget, and the expressions the stages use."""

    def __init__(self, groups, allowed, costs: list[_Costs], act_allowed=None, choices: bool = False):
        """``choices``: write every term over the 0/1 choice variables (the objective is a table): one set of
        them keeps the multiple-choice model's relaxation tight."""
        from ortools.sat.python import cp_model

        self.cp_model = cp_model
        m = self.model = cp_model.CpModel()
        self.lowest = [bits[0] for bits in allowed]
        self.bits = [
            m.new_int_var_from_domain(cp_model.Domain.from_values(bits), f"bits[{g.name}]")
            for g, bits in zip(groups, allowed)
        ]
        self.acts, self.pairs = [], []  # with activation bits as decisions: act[g] and the 0/1 pair[g, b, a]
        if act_allowed is not None:
            for g, var, bits, acts in zip(groups, self.bits, allowed, act_allowed):
                act = m.new_int_var_from_domain(cp_model.Domain.from_values(acts), f"act[{g.name}]")
                row = {(b, a): m.new_bool_var(f"pair[{g.name},{b},{a}]") for b in bits for a in acts}
                m.add_exactly_one(row.values())
                m.add(var == cp_model.LinearExpr.weighted_sum(list(row.values()), [b for b, _ in row]))
                m.add(act == cp_model.LinearExpr.weighted_sum(list(row.values()), [a for _, a in row]))
                self.acts.append(act)
                self.pairs.append(row)
        self.params = [g.params for g in groups]
        self.names = [g.name for g in groups]
        self.allowed = allowed
        self._chosen = None
        self.choices = choices or act_allowed is not None
        # Stage 2 maximises the size used, whatever the budgets: it must fit 64-bit integers. (Over the choice
        # variables where the model has them.)
        self.size = (self.table_expr([{b: p * b for b in bits} for bits, p in zip(allowed, self.params)])
                     if self.choices else cp_model.LinearExpr.weighted_sum(self.bits, self.params))
        self._check_fits(self.params, "size")
        for c in costs:
            self._add(c)

    def _check_fits(self, coef, what):
        largest = sum(c * bits[-1] for c, bits in zip(coef, self.allowed))
        if largest > _INT64_SAFE:
            raise OmpqValueError(
                f"the {what} of this model ({largest}) is too large for the solver's 64-bit "
                "integers; express it in coarser units"
            )
        return largest

    def _add(self, c: _Costs):
        if c.joint:
            self.model.add(self.pair_expr(c.int_table) <= c.int_limit)
        elif self.choices:  # on the choice variables too (one set of them)
            self.model.add(self.table_expr(c.int_table) <= c.int_limit)
        elif c.coefficients is not None:
            expr = self.cp_model.LinearExpr.weighted_sum(self.bits, c.coefficients)
            if c.int_limit < self._check_fits(c.coefficients, c.constraint.kind):  # else it cannot bind
                self.model.add(expr <= c.int_limit)
        else:
            self.model.add(self.table_expr(c.int_table) <= c.int_limit)

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

    def pair_expr(self, table):
        """sum_g table[g][(bits_g, act_g)] over the pair variables."""
        terms, coefs = [], []
        for row_vars, row in zip(self.pairs, table):
            terms += list(row_vars.values())
            coefs += [row[k] for k in row_vars]
        return self.cp_model.LinearExpr.weighted_sum(terms, coefs)

    def act_expr(self, table):
        """sum_g table[g][act_g] over the pair variables."""
        return self.pair_expr([{(b, a): row[a] for b, a in pairs} for pairs, row in zip(self.pairs, table)])

    def table_expr(self, table):
        """sum_g table[g][bits_g] as a linear expression over the 0/1 variables (the pairs', where there are
        pairs: one set of choice variables keeps the relaxation of the multiple-choice problem tight)."""
        if self.pairs:
            return self.pair_expr([{(b, a): row[b] for b, a in pairs} for pairs, row in zip(self.pairs, table)])
        terms, coefs = [], []
        for row_vars, bits, row in zip(self.chosen(), self.allowed, table):
            terms += row_vars
            coefs += [row[b] for b in bits]
        return self.cp_model.LinearExpr.weighted_sum(terms, coefs)

    def run(self, seconds, *, model=None, dtime=None, depth_first=False):
        """One CP-SAT solve of ``model`` (default: this one; another is a tie-break's problem, where presolve may
        drop solutions as long as one is left), single worker and fixed seed, capped at ``dtime`` units of
        deterministic time if given; returns (status name, solver). ``depth_first``: plain depth-first search in
        the model's decision order, presolve and symmetry breaking off (they may drop solutions not needed for
        optimality), so that the first solution is the one that order puts first."""
        solver = self.cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
        solver.parameters.max_time_in_seconds = max(seconds, 1e-3)
        # OR-Tools 9.15's presolve (its at-most-one/linear inclusion step) proved a wrong optimum on a model over
        # choice variables with a latency table (tests/test_solver.py::test_cp_sat_proves_the_true_optimum_on_a_
        # latency_table; OR-Tools issue 5293); without that step it is right and no slower here.
        solver.parameters.presolve_inclusion_work_limit = 0
        if dtime is not None:
            solver.parameters.max_deterministic_time = dtime
        if depth_first:
            solver.parameters.search_branching = self.cp_model.FIXED_SEARCH
            solver.parameters.cp_model_presolve = False
            solver.parameters.symmetry_level = 0
        elif not self.choices and model is None:
            # Skips presolve's dual reductions, which cost more than they save on this model
            # (measured: 1024 groups x 7 bits, 0.2 s instead of 0.9 s). On the model over choice variables
            # (a value table, activation bits as decisions) they are what makes it fast (16 groups x 7 bits x
            # 2 act bits: 0.02 s instead of no proof of optimality in 30 s).
            solver.parameters.keep_all_feasible_solutions_in_presolve = True
        status = solver.solve(self.model if model is None else model)
        return solver.status_name(status), solver

    def largest_first(self):
        """A copy of the model searched groups in order, largest value first (bits, then activation bits)."""
        model = self.model.clone()
        xs = [model.get_int_var_from_proto_index(v.index) for v in self.bits + self.acts]
        model.add_decision_strategy(xs, self.cp_model.CHOOSE_FIRST, self.cp_model.SELECT_MAX_VALUE)
        return model, xs

    def lexicographically_larger(self, found):
        """A copy of the model that also asks for (bits, then activation bits) lexicographically larger than
        ``found``: some position p keeps every earlier value and takes a larger one. Returns the copy and its
        variables."""
        model = self.model.clone()
        xs = [model.get_int_var_from_proto_index(v.index) for v in self.bits + self.acts]
        larger, same_before = [], None  # same_before: every earlier variable keeps its value (None: true)
        for x, value in zip(xs, found[0] + found[1]):
            here = model.new_bool_var("")
            model.add(x >= value + 1).only_enforce_if(here)
            same = model.new_bool_var("")
            model.add(x == value).only_enforce_if(same)
            if same_before is not None:
                model.add_implication(here, same_before)
                model.add_implication(same, same_before)
            larger.append(here)
            same_before = same
        model.add_bool_or(larger)
        # The earliest position that can grow: big steps towards the largest, also where many plans tie.
        model.maximize(self.cp_model.LinearExpr.weighted_sum(larger, list(range(len(larger), 0, -1))))
        return model, xs

    def values(self, solver):
        """(bits, activation bits) of the solution; no activation bits where they are not decisions."""
        return [int(solver.value(v)) for v in self.bits], [int(solver.value(v)) for v in self.acts]


def _solve_stages(mdl, objective, int_objective, deadline):
    """Run the three stages on the integer ``objective`` expression (``int_objective(bits, acts)`` is
    its exact value for a solution); return (status of stage 1, (bits, acts) or None, integer bound)."""
    m = mdl.model

    m.maximize(objective)
    for var, b in zip(mdl.bits, mdl.lowest):  # a hint; lowest bits meet the size and BOPs budgets
        m.add_hint(var, b)
    status, solver = mdl.run(deadline - time.perf_counter())
    if status not in ("OPTIMAL", "FEASIBLE"):
        return status, None, None
    found = mdl.values(solver)
    if status != "OPTIMAL":
        return status, found, solver.best_objective_bound
    best = int_objective(*found)  # exact, unlike solver.objective_value

    # Stage 2: objective fixed at its optimum, use as much of the size as possible.
    m.add(objective >= best)
    m.maximize(mdl.size)
    m.clear_hints()
    for var, b in zip(mdl.bits + mdl.acts, found[0] + found[1]):
        m.add_hint(var, b)
    status, solver = mdl.run(deadline - time.perf_counter())
    if status != "OPTIMAL":
        return "OPTIMAL", (mdl.values(solver) if status == "FEASIBLE" else found), best
    found = mdl.values(solver)

    # Stage 3: both fixed, the lexicographically largest bit vector (then activation bits), by two means that
    # each prove it: a depth-first search, largest values first, whose first solution is that one (at once
    # where many plans tie, long on some large models), and asking CP-SAT for a solution lexicographically
    # larger than the last one found until there is none (at once where the optimum is unique). They take
    # turns with growing shares of the cap on CP-SAT's deterministic time; past it the last one found is kept.
    m.add(mdl.size == sum(p * b for p, b in zip(mdl.params, found[0])))
    m.clear_objective()
    m.clear_hints()
    spent = 0.0
    for depth_first, share in _TIE_BREAK_TURNS:
        cap = min(share * _TIE_BREAK_DTIME, _TIE_BREAK_DTIME - spent)
        if cap <= 0:
            break
        trial, xs = mdl.largest_first() if depth_first else mdl.lexicographically_larger(found)
        status, solver = mdl.run(deadline - time.perf_counter(), model=trial, dtime=cap, depth_first=depth_first)
        spent += solver.deterministic_time
        if status in ("OPTIMAL", "FEASIBLE"):
            values = [int(solver.value(x)) for x in xs]
            found = values[:len(mdl.bits)], values[len(mdl.bits):]
        if depth_first and status in ("OPTIMAL", "FEASIBLE") or not depth_first and status == "INFEASIBLE":
            break  # the depth-first search's first solution, or nothing larger: the largest
    return "OPTIMAL", found, best


ENGINES = ("auto", "knapsack", "cp-sat")
KNAPSACK_MAX_STATES = 1 << 24  # ~100 MB of back pointers; past it the knapsack gives way to CP-SAT


KNAPSACK2_MAX_STATES = 1 << 22  # two budgets: at most ~2.5 s of trying (1024 groups) before CP-SAT takes over


class _Knapsack:
    """The core's exact multiple-choice knapsack on one budget or two, for one problem (``rows``: the integer
    objective table, one {bits: value} per group), its tables flattened once for every call: the same three
    stages as CP-SAT's model (largest objective, then size used, then the lexicographically largest bits)."""

    def __init__(self, groups, allowed, rows):
        import numpy as np

        self.np, self.allowed = np, allowed
        sizes = [{b: g.params * b for b in bits} for g, bits in zip(groups, allowed)]
        self.fits = all(self._fits(table) for table in (rows, sizes)) and \
            sum(max(row.values()) - min(row.values()) for row in rows) <= 2**62  # the core's limits
        self.values, self.tiebreaks = self._flat(rows), self._flat(sizes)
        self.offsets = np.cumsum([0] + [len(bits) for bits in allowed], dtype=np.int64)
        self._costs = {}  # id of a _Costs -> its flat integer table, or None where the knapsack cannot take it

    @staticmethod
    def _fits(table) -> bool:
        return sum(max(abs(v) for v in row.values()) for row in table) <= 2**62

    def _flat(self, table):
        return self.np.array([row[b] for row, bits in zip(table, self.allowed) for b in bits], dtype=self.np.int64)

    def _cost(self, c: _Costs):
        if id(c) not in self._costs:
            usable = self._fits(c.int_table) and all(v >= 0 for row in c.int_table for v in row.values())
            self._costs[id(c)] = self._flat(c.int_table) if usable else None
        return self._costs[id(c)]

    def solve(self, costs: list[_Costs], seconds):
        """The bits under these budgets (one or two), or None where the knapsack does not apply (a cost below
        0 or sums past 2**62) or gave up (too many states, time)."""
        from . import _core

        flat = [self._cost(c) for c in costs]
        if not self.fits or any(f is None for f in flat):
            return None
        second = {} if len(costs) == 1 else {"costs2": flat[1], "capacity2": costs[1].int_limit}
        max_states = KNAPSACK_MAX_STATES if len(costs) == 1 else KNAPSACK2_MAX_STATES
        status, picks, _, _ = _core.solve_knapsack(self.values, flat[0], self.tiebreaks, self.offsets,
                                                   costs[0].int_limit, max_states=max_states,
                                                   time_limit_s=max(seconds, 1e-3), **second)
        if status != "optimal":
            return None
        return [bits[k] for bits, k in zip(self.allowed, picks.tolist())]


def _no_solution_error(status, constraints, time_limit_s):
    """The error for a solve that returned no allocation."""
    if status == "INFEASIBLE":  # each budget alone was checked before: only their combination
        given = " and the ".join(c.describe() for c in constraints)
        return InfeasibleBudgetError(
            f"no allocation meets the {given} together, although each alone can be met; "
            "raise one of them or allow fewer bits"
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


def _verify(groups, allowed, bits, acts, costs: list[_Costs]) -> dict[str, float]:
    """Exact check of the returned plan against every constraint; a failure is a bug, never a user error.
    Returns each constraint's cost."""
    problems = [g.name for g, b, ok in zip(groups, bits, allowed) if b not in ok]
    spent = {}
    for c in costs:
        spent[c.constraint.kind] = value = c.of(bits, acts)
        if value > c.constraint.limit:
            problems.append(f"{c.constraint.kind} {value!r} > {c.constraint.limit!r}")
    if problems:
        raise OmpqError(f"internal error: the solver returned a plan that breaks {problems}")
    return spent


def solve(
    groups: Sequence[GroupSpec],
    constraints: Sequence[Constraint] = (),
    *,
    values: Sequence[Mapping[int, float]] | None = None,
    act_values: Sequence[Mapping[int, float]] | None = None,
    other_bits: int = 0,
    size_budget_bits: int | None = None,
    bops_budget: int | None = None,
    latency: Sequence[Mapping[int, float]] | None = None,
    latency_budget: float | None = None,
    time_limit_s: float = 30.0,
    weight_resolution: int = 10**7,
    engine: str = "auto",
) -> Allocation:
    """Exact bit allocation: maximise sum_g weight_g * bits_g under every constraint.

    ``constraints``: the budgets, one ``ompq_ext.constraints.Constraint`` per kind (size, BOPs,
    latency, or your own). The keywords ``size_budget_bits`` (counting ``other_bits`` too),
    ``bops_budget`` and ``latency`` + ``latency_budget`` (one mapping bit-width -> cost per
    group) are shorthands for the first three. At least one budget is required.

    ``values``: one mapping bit-width -> value per group (finite, any sign); the objective is
    then sum_g values[g][bits_g] and the groups' weights are ignored. A cost to minimise (a
    sensitivity, a loss increase) is given as its negative.

    Groups with ``act_choices`` choose their activation bits too (BOPs cost ``macs * bits * act``);
    ``act_values``: one mapping activation bit-width -> value per group, added to the objective
    (with weights instead of values, each group's weight multiplies ``bits + act``).

    ``engine``: ``"auto"`` (default) solves a single budget with fixed activation bits by the core's exact
    multiple-choice knapsack (same answer as CP-SAT's three stages, in milliseconds; CP-SAT takes over if it
    gives up), several budgets the same way when the answer under one of them alone meets the others
    (then it is the answer under all), two that both bind by the core's two-budget knapsack within a state
    budget; everything else goes to CP-SAT. ``"knapsack"`` or ``"cp-sat"`` insist on one.

    ``other_bits``: bits of the parameters outside the groups, counted in the reported
    ``size_bits`` (and in the ``size_budget_bits`` shorthand). A ``latency`` table without a
    budget is only reported. Raises ``InfeasibleBudgetError`` when no allocation meets the
    budgets, ``OmpqError`` when no allocation was found within ``time_limit_s``.
    See the module docstring for the model, the weight resolution and determinism.
    """
    start = time.perf_counter()
    allowed = _validate_groups(groups)
    act_allowed = _act_allowed(groups)
    joint = any(len(acts) > 1 for acts in act_allowed)  # activation bits are decisions too
    if act_values is not None and not joint:
        raise OmpqValueError("act_values scores activation bits, but no group has act_choices to choose from")
    other_bits = check_limit(other_bits, "other_bits")
    constraints = _validate_constraints(
        _as_list(constraints) + _keyword_constraints(size_budget_bits, bops_budget, latency, latency_budget, other_bits))
    weight_resolution = _validate_options(time_limit_s, weight_resolution, len(groups))
    costs = [_Costs(c, groups, allowed, act_allowed if joint else None) for c in constraints]
    report_latency = None
    if latency is not None and latency_budget is None:
        report_latency = _Costs(LatencyConstraint(latency, 0.0), groups, allowed)
    for c in costs:
        c.check_alone()

    value_table = None if values is None else _value_table(groups, allowed, values)
    act_table = (None if act_values is None
                 else per_bit_table(groups, act_allowed, act_values, "act_values", "value", nonnegative=False))

    if engine not in ENGINES:
        raise OmpqValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if engine == "knapsack" and joint:
        raise OmpqValueError("engine='knapsack' solves with fixed activation bits; use engine='auto' or 'cp-sat' "
                             "where activation bits are decisions")
    bits = None
    if not joint and engine != "cp-sat":
        rows = ([{b: w * b for b in ok} for w, ok in zip(integer_weights(groups, weight_resolution), allowed)]
                if value_table is None else _integer_values(value_table, weight_resolution)[0])
        knapsack = _Knapsack(groups, allowed, rows)
        # Each budget alone, while none is solved: an answer under one budget that meets the others is the
        # answer under all (dropping a budget only enlarges the set the three stages choose from).
        for c in costs:
            alone = knapsack.solve([c], start + time_limit_s - time.perf_counter())
            if alone is not None and all(o.within(alone) for o in costs):
                bits = alone
                break
        if bits is None and len(costs) == 2:  # both bind: the two-budget knapsack, within a state budget
            bits = knapsack.solve(costs, start + time_limit_s - time.perf_counter())
        if bits is None and engine == "knapsack":
            several = "" if len(costs) == 1 else f" ({KNAPSACK2_MAX_STATES} with two budgets), or no budget alone decided"
            raise OmpqError(f"the knapsack solver found no proven optimum within time_limit_s={time_limit_s} and "
                            f"{KNAPSACK_MAX_STATES} states{several}; use engine='auto' (CP-SAT takes over)")
    if bits is not None:
        status, acts, used = "OPTIMAL", [a[0] for a in act_allowed], "knapsack"
    else:
        used = "cp-sat"
        mdl = _Model(groups, allowed, costs, act_allowed if joint else None, choices=value_table is not None)
        if value_table is None:
            weights = integer_weights(groups, weight_resolution)
            if joint:
                expr = mdl.pair_expr([{(b, a): w * (b + a) for b, a in pairs} for pairs, w in zip(mdl.pairs, weights)])
            else:
                expr = mdl.cp_model.LinearExpr.weighted_sum(mdl.bits, weights)
            status, found, int_bound = _solve_stages(
                mdl, expr, lambda bits, acts: sum(w * (b + a) for w, b, a in zip(weights, bits, acts or [0] * len(bits))),
                start + time_limit_s)
        else:
            rows = value_table + (act_table or [])  # one scale for both tables: their values stay comparable
            ints, scale, mins = _integer_values(rows, weight_resolution)
            expr = mdl.table_expr(ints[:len(groups)])
            if act_table is not None:
                expr = expr + mdl.act_expr(ints[len(groups):])

            def int_objective(bits, acts):
                return (sum(row[b] for row, b in zip(ints, bits))
                        + sum(row[a] for row, a in zip(ints[len(groups):], acts)))
            status, found, int_bound = _solve_stages(mdl, expr, int_objective, start + time_limit_s)
        if found is None:
            raise _no_solution_error(status, constraints, time_limit_s)
        bits, acts = found
        acts = acts or [a[0] for a in act_allowed]
    spent = _verify(groups, allowed, bits, acts, costs)
    if value_table is None:
        objective = _objective(groups, bits) + (_objective(groups, acts) if joint else 0.0)
    else:
        objective = math.fsum([row[b] for row, b in zip(value_table, bits)]
                              + [row[a] for row, a in zip(act_table or [], acts)])
    if status == "OPTIMAL":
        bound, gap = objective, 0.0
    else:
        if value_table is None:
            spans = [tuple(b + (a if joint else 0) for b in bits for a in acts)
                     for bits, acts in zip(allowed, act_allowed)]
            int_to_float = _float_bound(groups, spans, weights, int_bound, weight_resolution)
        else:
            int_to_float = _float_value_bound(rows, ints, scale, mins, int_bound)
        bound = max(objective, int_to_float)
        gap = (bound - objective) / max(abs(bound), 1e-12)
    lat = spent.get("latency", None if report_latency is None else report_latency.of(bits))
    return Allocation(bits=bits, status=status, objective=objective, bound=bound, gap=gap,
                      size_bits=_size(groups, bits, other_bits), bops=_bops(groups, bits, acts), latency=lat,
                      solve_time_s=time.perf_counter() - start, costs=spent, act_bits=acts, engine=used)


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
    if size_budget_bits is None:
        raise OmpqValueError("solve_relaxed needs size_budget_bits")
    budget = check_limit(size_budget_bits, "size_budget_bits")
    other_bits = check_limit(other_bits, "other_bits")
    if rounding not in ("nearest", "floor_ceil"):
        raise OmpqValueError(f"rounding must be 'nearest' or 'floor_ceil', got {rounding!r}")
    _Costs(SizeConstraint(budget, other_bits), groups, allowed).check_alone()

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
