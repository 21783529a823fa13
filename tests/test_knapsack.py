"""The core's exact multiple-choice knapsack (cpp/src/knapsack.cpp): against brute force on the raw problem,
and through solver.solve against CP-SAT's three stages, on hundreds of random instances each."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ompq_ext import _core, solver
from ompq_ext.constraints import BopsConstraint, LatencyConstraint, SizeConstraint
from ompq_ext.errors import OmpqError, OmpqValueError
from ompq_ext.solver import GroupSpec, solve


def flat(rows):
    return np.array([x for row in rows for x in row], dtype=np.int64)


def run_core(values, costs, tiebreaks, capacity, **kw):
    offsets = np.cumsum([0] + [len(r) for r in values], dtype=np.int64)
    return _core.solve_knapsack(flat(values), flat(costs), flat(tiebreaks), offsets, capacity, **kw)


def brute_force(values, costs, tiebreaks, capacity):
    """The largest (sum of values, sum of tiebreaks, choices) within the capacity, or None."""
    best = None
    for picks in itertools.product(*[range(len(r)) for r in values]):
        if sum(c[k] for c, k in zip(costs, picks)) > capacity:
            continue
        key = (sum(v[k] for v, k in zip(values, picks)), sum(t[k] for t, k in zip(tiebreaks, picks)), picks)
        best = key if best is None or key > best else best
    return best


@st.composite
def raw_problems(draw):
    """Small problems with many ties (values from a narrow range, tiebreaks equal to costs or not)."""
    groups = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["narrow", "wide", "huge"]))  # huge: sums near 2^62, where doubles round
    value = {"narrow": st.integers(-3, 3), "wide": st.integers(-10**6, 10**6),
             "huge": st.integers(-2**59, 2**59) | st.integers(2**59 - 64, 2**59)}[kind]
    unit = 2**55 if kind == "huge" else 1  # costs in multiples, plus a little, of this (sums stay below 2^62)
    values, costs, tiebreaks = [], [], []
    for _ in range(groups):
        k = draw(st.integers(1, 5))
        values.append(draw(st.lists(value, min_size=k, max_size=k)))
        costs.append([unit * c + draw(st.integers(0, 3)) * (unit > 1) for c in
                      draw(st.lists(st.integers(0, 9), min_size=k, max_size=k))])
        tiebreaks.append(costs[-1] if draw(st.booleans()) else draw(st.lists(st.integers(0, 4), min_size=k,
                                                                             max_size=k)))
    capacity = draw(st.integers(0, 40)) * unit + draw(st.integers(0, 8))
    return values, costs, tiebreaks, capacity


@settings(max_examples=400, deadline=None)
@given(raw_problems())
def test_core_equals_brute_force(problem):
    values, costs, tiebreaks, capacity = problem
    status, picks, states, peak = run_core(values, costs, tiebreaks, capacity)
    expected = brute_force(values, costs, tiebreaks, capacity)
    if expected is None:
        assert status == "infeasible" and picks is None
    else:
        assert status == "optimal"
        assert tuple(picks.tolist()) == expected[2]
        assert states >= peak >= 1


def brute_force_two(values, costs, costs2, tiebreaks, capacity, capacity2):
    best = None
    for picks in itertools.product(*[range(len(r)) for r in values]):
        if (sum(c[k] for c, k in zip(costs, picks)) > capacity
                or sum(c[k] for c, k in zip(costs2, picks)) > capacity2):
            continue
        key = (sum(v[k] for v, k in zip(values, picks)), sum(t[k] for t, k in zip(tiebreaks, picks)), picks)
        best = key if best is None or key > best else best
    return best


@settings(max_examples=400, deadline=None)
@given(raw_problems(), st.data())
def test_core_with_two_budgets_equals_brute_force(problem, data):
    values, costs, tiebreaks, capacity = problem
    huge = max(max(c) for c in costs) > 2**40
    costs2 = [data.draw(st.lists(st.integers(0, 2**55 * 9 if huge else 9), min_size=len(r), max_size=len(r)))
              for r in values]
    capacity2 = data.draw(st.integers(0, 2**55 * 40 if huge else 40))
    offsets = np.cumsum([0] + [len(r) for r in values], dtype=np.int64)
    status, picks, _, _ = _core.solve_knapsack(flat(values), flat(costs), flat(tiebreaks), offsets, capacity,
                                               costs2=flat(costs2), capacity2=capacity2)
    expected = brute_force_two(values, costs, costs2, tiebreaks, capacity, capacity2)
    if expected is None:
        assert status == "infeasible" and picks is None
    else:
        assert status == "optimal" and tuple(picks.tolist()) == expected[2]


TIE_IN_THE_BACKWARD_PASS = (  # values, costs, costs2, tiebreaks, capacity, capacity2
    [[2, -1, -2, -1], [2, -1, 2], [2, -2, -2], [-1, -1]], [[0, 1, 4, 4], [1, 2, 3], [2, 3, 3], [0, 4]],
    [[2, 4, 4, 4], [1, 2, 3], [0, 0, 0], [0, 2]], [[0, 1, 4, 4], [2, 1, 2], [0, 0, 1], [0, 4]], 18, 12)


def test_core_with_two_budgets_breaks_a_tie_met_by_the_backward_pass():
    # Found by fuzzing against brute_force_two: two optima in value and tiebreak whose difference lies in groups the
    # backward pass decides (meet in the middle) when the passes take turns (one thread: where they meet is fixed);
    # the tie must send the search to its lexicographic run. Checked in a child process with OMP_NUM_THREADS=1
    # (with two threads the meeting point depends on their speed) and here.
    values, costs, costs2, tiebreaks, capacity, capacity2 = TIE_IN_THE_BACKWARD_PASS
    expected = brute_force_two(values, costs, costs2, tiebreaks, capacity, capacity2)
    assert expected[2] == (0, 2, 0, 1)
    status, picks, _, _ = run_core(values, costs, tiebreaks, capacity, costs2=flat(costs2), capacity2=capacity2)
    assert status == "optimal" and tuple(picks.tolist()) == expected[2]
    child = ("import numpy as np, test_knapsack as t\n"
             "values, costs, costs2, tiebreaks, capacity, capacity2 = t.TIE_IN_THE_BACKWARD_PASS\n"
             "status, picks, _, _ = t.run_core(values, costs, tiebreaks, capacity, costs2=t.flat(costs2), "
             "capacity2=capacity2)\n"
             "print(status, tuple(picks.tolist()))\n")
    out = subprocess.run([sys.executable, "-c", child], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "optimal (0, 2, 0, 1)"


def test_core_with_two_budgets_on_many_tiny_instances_full_of_ties():
    # Tie-heavy two-budget problems (values -2..2, costs 0..4) against brute force: the meet-in-the-middle join
    # and its tie rules on 3000 of them (each takes the two passes, on two threads where OpenMP has them).
    rng = np.random.default_rng(20261206)
    for _ in range(3000):
        sizes = rng.integers(1, 5, rng.integers(2, 7))
        values, costs, costs2 = ([rng.integers(lo, hi, k).tolist() for k in sizes] for lo, hi in ((-2, 3), (0, 5), (0, 5)))
        tiebreaks = [c if rng.random() < 0.5 else rng.integers(0, 3, len(c)).tolist() for c in costs]
        capacity, capacity2 = int(rng.integers(0, 20)), int(rng.integers(0, 20))
        status, picks, _, _ = run_core(values, costs, tiebreaks, capacity, costs2=flat(costs2), capacity2=capacity2)
        expected = brute_force_two(values, costs, costs2, tiebreaks, capacity, capacity2)
        if expected is None:
            assert status == "infeasible", (values, costs, costs2, tiebreaks, capacity, capacity2)
        else:
            assert status == "optimal" and tuple(picks.tolist()) == expected[2], \
                (values, costs, costs2, tiebreaks, capacity, capacity2)


def test_core_with_two_budgets_stops_at_its_limits():
    # The two passes (on two threads where OpenMP has them) stop at the state and time limits and say so.
    rng = np.random.default_rng(1)
    values = [list(rng.integers(0, 10**6, 7)) for _ in range(300)]
    costs = [list(rng.integers(1, 10**4, 7)) for _ in range(300)]
    costs2 = [list(rng.integers(1, 10**4, 7)) for _ in range(300)]
    capacity = int(sum(sum(c) for c in costs) / 7 * 0.6)
    capacity2 = int(sum(sum(c) for c in costs2) / 7 * 0.6)
    kw = dict(costs2=flat(costs2), capacity2=capacity2)
    assert run_core(values, costs, costs, capacity, max_states=1, **kw)[0] == "too_many_states"
    assert run_core(values, costs, costs, capacity, time_limit_s=1e-9, **kw)[0] == "time_limit"
    status, picks, states, _ = run_core(values, costs, costs, capacity, **kw)
    assert status == "optimal" and states > 1
    chosen = [row[k] for row, k in zip(costs, picks.tolist())], [row[k] for row, k in zip(costs2, picks.tolist())]
    assert sum(chosen[0]) <= capacity and sum(chosen[1]) <= capacity2


def test_core_on_a_hand_made_tie():
    # Two optima in value and tiebreak; the lexicographically larger choices win, also when found late.
    values = [[0, 5], [0, 5]]
    costs = [[0, 1], [0, 1]]
    status, picks, _, _ = run_core(values, costs, [[0, 1], [0, 1]], 1)
    assert status == "optimal" and picks.tolist() == [1, 0]


def test_core_limits_and_bad_input():
    rng = np.random.default_rng(0)
    values = [list(rng.integers(0, 10**6, 7)) for _ in range(300)]
    costs = [list(rng.integers(1, 10**4, 7)) for _ in range(300)]
    capacity = int(sum(sum(c) for c in costs) / 7 * 0.6)
    assert run_core(values, costs, costs, capacity, max_states=1)[0] == "too_many_states"
    assert run_core(values, costs, costs, capacity, time_limit_s=1e-9)[0] == "time_limit"
    assert run_core(values, costs, costs, capacity)[0] == "optimal"
    offsets = np.array([0, 1], dtype=np.int64)
    one = np.array([1], dtype=np.int64)
    with pytest.raises(OmpqValueError, match="int64"):
        _core.solve_knapsack(one.astype(np.int32), one, one, offsets, 1)
    with pytest.raises(OmpqValueError, match="offsets"):
        _core.solve_knapsack(one, one, one, np.array([0, 2], dtype=np.int64), 1)
    with pytest.raises(OmpqValueError, match="same length"):
        _core.solve_knapsack(one, np.array([1, 2], dtype=np.int64), one, offsets, 1)
    with pytest.raises(OmpqValueError, match=">= 0"):
        _core.solve_knapsack(one, -one, one, offsets, 1)
    with pytest.raises(OmpqValueError, match="2\\^62"):
        two = np.array([1, 1], dtype=np.int64)
        _core.solve_knapsack(two, two * 2**62, two, np.array([0, 1, 2], dtype=np.int64), 1)
    with pytest.raises(OmpqValueError, match="max_states"):
        _core.solve_knapsack(one, one, one, offsets, 1, max_states=0)


# ------------------------------------------------------------------------------------------------
# Through solve(): the knapsack against CP-SAT


@st.composite
def allocation_problems(draw):
    """Groups with OMPQ-like weights or a value table, and one budget of some kind between the extremes."""
    n = draw(st.integers(1, 9))
    bits = tuple(sorted(draw(st.sets(st.integers(1, 8), min_size=1, max_size=5))))
    groups = [GroupSpec(f"g{i}", draw(st.integers(1, 5000)), draw(st.integers(0, 10**5)),
                        draw(st.sampled_from([0.0, 0.25, 1.0]) | st.floats(0, 1)), bits) for i in range(n)]
    values = None
    if draw(st.booleans()):  # a table, some rows tied
        values = [{b: draw(st.sampled_from([0.0, -1.0]) | st.floats(-100, 100)) for b in bits} for _ in groups]
    kind = draw(st.sampled_from(["size", "bops", "latency"]))
    t = draw(st.floats(0, 1))
    if kind == "size":
        lo, hi = (sum(g.params * f(bits) for g in groups) for f in (min, max))
        constraint = SizeConstraint(int(lo + t * (hi - lo)))
    elif kind == "bops":
        lo, hi = (sum(g.macs * 8 * f(bits) for g in groups) for f in (min, max))
        constraint = BopsConstraint(int(lo + t * (hi - lo)))
    else:
        table = [{b: draw(st.floats(0, 10)) for b in bits} for _ in groups]
        lo, hi = (sum(f(row.values()) for row in table) for f in (min, max))
        constraint = LatencyConstraint(table, (lo + t * (hi - lo)) * (1 + 1e-6) + 1e-6)  # floats: room to round
    return groups, values, constraint


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(allocation_problems())
def test_knapsack_equals_cp_sat(problem):
    groups, values, constraint = problem
    a = solve(groups, [constraint], values=values, engine="knapsack")
    b = solve(groups, [constraint], values=values, engine="cp-sat")
    assert a.engine == "knapsack" and b.engine == "cp-sat"
    assert a.status == b.status == "OPTIMAL"
    # The same integer objective (the float one summed the same way), the same size, the same bits: CP-SAT's
    # lexicographic stage runs to its end on instances this small.
    assert a.objective == b.objective
    assert a.size_bits == b.size_bits
    assert a.bits == b.bits
    assert a.costs[constraint.kind] <= constraint.limit


def _network_like(num_groups, seed):
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e3), np.log(2.4e6), num_groups)).astype(np.int64)
    weights = np.sort(rng.uniform(0.5, 1.0, num_groups))[::-1]
    groups = [GroupSpec(f"g{i}", int(p), 0, float(w), tuple(range(2, 9))) for i, (p, w) in enumerate(zip(params,
                                                                                                            weights))]
    return groups, int(rng.uniform(3, 6) * params.sum()), rng


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_equals_cp_sat_on_network_sized_instances(seed):
    groups, size, rng = _network_like(120, seed)
    for values in (None, [{b: -g.params * 2.0 ** (-2 * b) * rng.uniform(0.5, 2) for b in g.bits} for g in groups]):
        a = solve(groups, size_budget_bits=size, values=values, engine="knapsack")
        b = solve(groups, size_budget_bits=size, values=values, engine="cp-sat")
        assert a.objective == b.objective and a.size_bits == b.size_bits <= size
        if b.status == "OPTIMAL":
            assert a.bits == b.bits


def test_auto_uses_the_knapsack_for_one_and_two_budgets_and_cp_sat_for_the_rest(monkeypatch):
    groups, size, _ = _network_like(20, 0)
    rng = np.random.default_rng(3)
    groups = [dataclasses.replace(g, macs=g.params * int(rng.choice([1, 49, 784]))) for g in groups]
    assert solve(groups, size_budget_bits=size).engine == "knapsack"
    under_size = solve(groups, size_budget_bits=size)
    # A BOPs budget the size budget's plan meets: that plan is the answer under both.
    loose = solve(groups, size_budget_bits=size, bops_budget=under_size.bops)
    assert loose.engine == "knapsack" and loose.bits == under_size.bits
    assert loose.bits == solve(groups, size_budget_bits=size, bops_budget=under_size.bops, engine="cp-sat").bits
    # One it does not meet: the two-budget knapsack, the same plan as CP-SAT's.
    tight = under_size.bops - 1
    both = solve(groups, size_budget_bits=size, bops_budget=tight)
    assert both.engine == "knapsack" and both.bops <= tight and both.size_bits <= size
    assert both.bits == solve(groups, size_budget_bits=size, bops_budget=tight, engine="cp-sat").bits
    # Past its state budget CP-SAT takes over; engine="knapsack" says it could not.
    monkeypatch.setattr(solver, "KNAPSACK2_MAX_STATES", 1)
    assert solve(groups, size_budget_bits=size, bops_budget=tight).engine == "cp-sat"
    with pytest.raises(OmpqError, match="no budget alone decided"):
        solve(groups, size_budget_bits=size, bops_budget=tight, engine="knapsack")
    joint = [dataclasses.replace(g, act_choices=(4, 8)) for g in groups]
    assert solve(joint, size_budget_bits=size).engine == "cp-sat"
    with pytest.raises(OmpqValueError, match="activation bits are decisions"):
        solve(joint, size_budget_bits=size, engine="knapsack")
    with pytest.raises(OmpqValueError, match="engine must be one of"):
        solve(groups, size_budget_bits=size, engine="dp")


@st.composite
def two_budget_problems(draw):
    groups, values, _ = draw(allocation_problems())
    groups = [dataclasses.replace(g, macs=draw(st.integers(0, 10**5))) for g in groups]
    bits = groups[0].bits
    t1, t2 = draw(st.floats(0, 1)), draw(st.floats(0, 1))
    lo, hi = (sum(g.params * f(bits) for g in groups) for f in (min, max))
    blo, bhi = (sum(g.macs * 8 * f(bits) for g in groups) for f in (min, max))
    return groups, values, [SizeConstraint(int(lo + t1 * (hi - lo))), BopsConstraint(int(blo + t2 * (bhi - blo)))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(two_budget_problems())
def test_two_budgets_auto_equals_cp_sat(problem):
    groups, values, constraints = problem
    try:
        b = solve(groups, constraints, values=values, engine="cp-sat")
    except OmpqError as e:  # both budgets together cannot be met: auto says the same
        with pytest.raises(type(e)):
            solve(groups, constraints, values=values)
        return
    a = solve(groups, constraints, values=values)
    assert (a.bits, a.objective, a.size_bits) == (b.bits, b.objective, b.size_bits)
    assert all(a.costs[c.kind] <= c.limit for c in constraints)


def test_cp_sat_takes_over_when_the_knapsack_gives_up(monkeypatch):
    groups, size, _ = _network_like(60, 1)
    expected = solve(groups, size_budget_bits=size)
    monkeypatch.setattr(solver, "KNAPSACK_MAX_STATES", 1)
    a = solve(groups, size_budget_bits=size)
    assert a.engine == "cp-sat" and a.bits == expected.bits
    with pytest.raises(OmpqError, match="knapsack solver found no proven optimum"):
        solve(groups, size_budget_bits=size, engine="knapsack")


def test_the_plan_records_which_engine_solved_it(tmp_path, monkeypatch):
    import json

    import torch

    import ompq_ext
    from ompq_ext.models import resnet1d

    model, x = resnet1d(width=8).eval(), torch.randn(16, 1, 40)
    one = ompq_ext.plan(model, [x], "4bits", method="ompq", progress=False)
    monkeypatch.setattr(solver, "KNAPSACK2_MAX_STATES", 1)  # two budgets that both bind then go to CP-SAT
    bops = one.totals.bops  # the 4-bit plan's BOPs less one: the BOPs budget binds
    two = ompq_ext.plan(model, [x], ["4bits", f"{(bops - 1) / 1e9}GBOPs"], method="ompq", progress=False)
    assert one.solver.engine == "knapsack" and two.solver.engine == "cp-sat"
    one.save(tmp_path / "plan.json")
    assert ompq_ext.Plan.load(tmp_path / "plan.json").solver.engine == "knapsack"
    data = json.loads((tmp_path / "plan.json").read_text())
    del data["solver"]["engine"]  # a plan written before the engine was recorded
    assert ompq_ext.Plan.from_json(data).solver.engine is None
