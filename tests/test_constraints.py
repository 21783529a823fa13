"""Budget kinds as ``Constraint`` objects: the three built in (size, BOPs, latency), and a new kind
written here as one small class, taken as it is by ``solve`` and ``plan``; each checked against
brute force."""

from __future__ import annotations

import fnmatch
import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ompq_ext
from ompq_ext.constraints import BopsConstraint, Constraint, LatencyConstraint, SizeConstraint
from ompq_ext.errors import InfeasibleBudgetError, OmpqTypeError, OmpqValueError
from ompq_ext.models import mlp, resnet1d
from ompq_ext.solver import GroupSpec, solve


class PatternSizeConstraint(Constraint):
    """A new budget kind: the bits of the weights whose layer names match ``pattern`` (say, the
    convolutions that must fit an accelerator's on-chip memory) stay within ``limit``."""

    kind = "pattern_size"

    def __init__(self, pattern: str, limit: int):
        self.pattern, self.limit = pattern, limit

    def _matches(self, g) -> bool:
        return any(fnmatch.fnmatchcase(n, self.pattern) for n in (g.layers or (g.name,)))

    def costs(self, groups, allowed):
        return [{b: g.params * b if self._matches(g) else 0 for b in bits} for g, bits in zip(groups, allowed)]

    def describe(self) -> str:
        return f"{self.pattern} budget {self.limit} bits"


def brute_force(groups, constraints):
    """The best float objective over every plan that meets every constraint (None if none does)."""
    allowed = [sorted(set(g.bits)) for g in groups]
    tables = [c.costs(groups, allowed) for c in constraints]
    best = None
    for bits in itertools.product(*allowed):
        if all(math.fsum(row[b] for row, b in zip(t, bits)) + c.fixed_cost <= c.limit
               for c, t in zip(constraints, tables)):
            value = math.fsum(g.weight * b for g, b in zip(groups, bits))
            best = value if best is None else max(best, value)
    return best


def tolerance(groups):
    top = max(g.weight for g in groups)
    return top / 10**7 * 0.5 * sum(max(g.bits) - min(g.bits) for g in groups) + 1e-12


@st.composite
def instances(draw):
    n = draw(st.integers(2, 5))
    groups = [GroupSpec(f"conv{i}" if draw(st.booleans()) else f"fc{i}", draw(st.integers(1, 500)),
                        draw(st.integers(0, 2000)), draw(st.floats(0, 1)), (2, 4, 8), act_bits=draw(st.sampled_from((4, 8))))
              for i in range(n)]
    size = draw(st.integers(sum(2 * g.params for g in groups), sum(8 * g.params for g in groups)))
    bops = draw(st.integers(sum(2 * g.macs * g.act_bits for g in groups), sum(8 * g.macs * g.act_bits for g in groups)))
    conv = draw(st.integers(0, sum(8 * g.params for g in groups)))
    return groups, size, bops, conv


@settings(max_examples=60, deadline=None)
@given(instances())
def test_constraint_objects_and_keywords_agree_and_are_exact(case):
    groups, size, bops, conv = case
    by_keyword = solve(groups, size_budget_bits=size, bops_budget=bops)
    by_object = solve(groups, [SizeConstraint(size), BopsConstraint(bops)])
    assert by_object.bits == by_keyword.bits and by_object.costs == {"size": by_object.size_bits, "bops": by_object.bops}
    # A new kind, next to the built-in ones: exact, and within every budget.
    constraints = [SizeConstraint(size), BopsConstraint(bops), PatternSizeConstraint("conv*", conv)]
    best = brute_force(groups, constraints)
    if best is None:
        with pytest.raises(InfeasibleBudgetError):
            solve(groups, constraints)
        return
    a = solve(groups, constraints)
    conv_bits = sum(g.params * b for g, b in zip(groups, a.bits) if g.name.startswith("conv"))
    assert a.costs["pattern_size"] == conv_bits <= conv
    assert a.size_bits <= size and a.bops <= bops
    assert a.objective == pytest.approx(best, abs=tolerance(groups))


def test_a_new_kind_alone_names_its_smallest_cost():
    groups = [GroupSpec("conv0", 100, 0, 1.0, (4, 8)), GroupSpec("fc1", 100, 0, 1.0, (4, 8))]
    with pytest.raises(InfeasibleBudgetError, match="conv\\* budget 399 bits.*smallest achievable 400") as err:
        solve(groups, [PatternSizeConstraint("conv*", 399)])
    assert err.value.smallest == 400
    assert solve(groups, [PatternSizeConstraint("conv*", 400)]).bits == [4, 8]


def test_one_constraint_per_kind():
    groups = [GroupSpec("a", 10, 0, 1.0, (4, 8))]
    with pytest.raises(OmpqValueError, match="two size budgets"):
        solve(groups, [SizeConstraint(100)], size_budget_bits=80)
    with pytest.raises(OmpqTypeError, match="Constraint objects"):
        solve(groups, ["80 bits"])


def test_size_constraint_counts_the_parameters_outside_the_plan():
    groups = [GroupSpec("a", 10, 0, 1.0, (4, 8))]
    assert solve(groups, [SizeConstraint(100, other_bits=20)]).bits == [8]
    assert solve(groups, [SizeConstraint(100, other_bits=21)]).bits == [4]
    with pytest.raises(OmpqValueError, match="other_bits"):
        SizeConstraint(100, other_bits=-1)


# ---------------------------------------------------------------- through plan()


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    return resnet1d(width=8).eval(), torch.randn(32, 1, 40)


def latency_table(model):
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    return {n: {b: 0.1 * (i % 5 + 1) * b + 0.01 for b in range(1, 17)} for i, n in enumerate(names)}


# Each method's latency budget is one its unconstrained plan exceeds (OMPQ's: 26.16, verified's: 18.56).
@pytest.mark.parametrize("method, limit", [("ompq", 20.0), ("verified", 16.0)])
def test_latency_as_a_budget_object_is_the_latency_keywords(model_and_data, method, limit):
    model, x = model_and_data
    table = latency_table(model)
    by_keywords = ompq_ext.plan(model, [x], "4bits", bits=[2, 4, 8], latency_table=table, latency_budget=limit,
                                method=method, progress=False)
    by_object = ompq_ext.plan(model, [x], ["4bits", LatencyConstraint(table, limit)], bits=[2, 4, 8],
                              method=method, progress=False)
    assert by_object.settings.method == by_keywords.settings.method == method
    assert by_object.bits == by_keywords.bits
    assert by_object.budgets == by_keywords.budgets
    latency = math.fsum(table[x.name][x.bits] for x in by_object.layers)
    assert by_object.totals.latency == latency <= limit
    unconstrained = ompq_ext.plan(model, [x], "4bits", bits=[2, 4, 8], method=method, progress=False)
    assert math.fsum(table[x.name][x.bits] for x in unconstrained.layers) > limit  # the budget binds
    assert by_object.budgets[1].kind == "latency" and by_object.budgets[1].limit == limit


def test_a_new_kind_in_plan(model_and_data):
    model, x = model_and_data
    free = ompq_ext.plan(model, [x], "5bits", progress=False)
    stem_bits = free.bits["stem.0"] * free.layers[0].params
    bound = PatternSizeConstraint("stem.*", stem_bits - 1)
    p = ompq_ext.plan(model, [x], ["5bits", bound], progress=False)
    assert p.bits["stem.0"] * p.layers[0].params <= stem_bits - 1
    assert p.totals.avg_bits <= 5
    assert p.budgets[1].kind == "pattern_size" and p.budgets[1].description == bound.describe()
    with pytest.raises(OmpqValueError, match="two latency budgets"):
        ompq_ext.plan(model, [x], ["5bits", LatencyConstraint({}, 1.0)], latency_table=latency_table(model),
                      latency_budget=2.0, progress=False)


def test_latency_table_must_cover_every_planned_layer():
    torch.manual_seed(0)
    model = mlp(6, (8,), 2)
    with pytest.raises(OmpqValueError, match="no entry for layer '2'"):
        ompq_ext.plan(model, [torch.randn(40, 6)], "4bits", latency_table={"0": {b: 1.0 for b in range(1, 17)}},
                      latency_budget=5.0, progress=False)


def test_bad_constraints_get_named_errors():
    groups = [GroupSpec("a", 10, 0, 1.0, (4, 8)), GroupSpec("b", 10, 0, 1.0, (4, 8))]

    class NoCost(PatternSizeConstraint):
        def costs(self, groups, allowed):
            return [{4: 0} for _ in groups]

    class NoLimit(Constraint):
        kind = "nolimit"

        def costs(self, groups, allowed):
            return [{b: 0 for b in bits} for bits in allowed]

        def describe(self):
            return "no limit"

    with pytest.raises(OmpqValueError, match="pattern_size constraint gives group 'a' no numeric cost"):
        solve(groups, [NoCost("*", 100)])
    with pytest.raises(OmpqTypeError, match="NoLimit constraint has no numeric limit"):
        solve(groups, [NoLimit()])
    assert solve(groups, SizeConstraint(120)).bits == [8, 4]  # one constraint alone
    with pytest.raises(OmpqTypeError, match="list of Constraint objects"):
        solve(groups, 120)
    with pytest.raises(OmpqValueError, match="latency_budget must be a number"):
        LatencyConstraint({}, "abc")


def test_latency_table_rows_are_checked_per_layer():
    groups = [GroupSpec("a", 10, 0, 1.0, (4, 8), layers=("a", "a2")), GroupSpec("b", 10, 0, 1.0, (4, 8))]
    full = {"a": {4: 1.0, 8: 2.0}, "a2": {"4": 0.5, "8": 0.5}, "b": {4: 1.0, 8: 3.0}}
    a = solve(groups, [LatencyConstraint(full, 4.5)])  # a costs 1.5 / 2.5 (its two layers), b 1.0 / 3.0
    assert a.bits == [8, 4] and a.latency == 3.5  # [8, 8] costs 5.5; [4, 8] ties and loses the tie-break
    for bad, match in [({**full, "a2": {4: 0.5}}, r"layer 'a2': latency table has no entry for bits \[8\]"),
                       ({**full, "a2": {4: 0.5, 8: -1.0}}, "layer 'a2': latency costs must be finite and >= 0"),
                       ({**full, "b": {4.7: 1.0, 8: 3.0}}, "bits 4.7; bits are integers"),
                       ({**full, "b": {4: "fast", 8: 3.0}}, "layer 'b': latency costs must be numbers")]:
        with pytest.raises(OmpqValueError, match=match):
            solve(groups, [LatencyConstraint(bad, 4.5)])


def test_a_size_constraint_is_recorded_in_bytes_like_a_size_budget(model_and_data):
    model, x = model_and_data
    by_text = ompq_ext.plan(model, [x], "3bits", progress=False)
    limit = by_text.budgets[0].limit
    fixed = 32 * by_text.totals.other_params + by_text.totals.scale_bits
    by_object = ompq_ext.plan(model, [x], SizeConstraint(limit, other_bits=fixed),
                              progress=False)
    assert by_object.bits == by_text.bits
    assert by_object.budgets[0].kind == "size" and float(Fraction(by_object.budgets[0].value)) == limit / 8
