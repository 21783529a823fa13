"""Activation bits in the plan: ``plan(act_bits=(4, 8))`` chooses each layer's input bits jointly with its
weight bits, exactly (the solver against brute force over every (bits, act bits) assignment), quantize()
follows the choices, and the real BOPs (quant_report) equal the plan's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import ompq_ext
from ompq_ext.allocators import GivenScores
from ompq_ext.constraints import BopsConstraint, SizeConstraint
from ompq_ext.errors import OmpqValueError
from ompq_ext.quant.modules import QuantLayer
from ompq_ext.solver import GroupSpec, solve


def brute_force(groups, values, act_values, size_limit, bops_limit):
    best, best_plan = None, None
    options = [[(b, a) for b in g.bits for a in g.act_choices] for g in groups]
    for plan in itertools.product(*options):
        size = sum(g.params * b for g, (b, _) in zip(groups, plan))
        bops = sum(g.macs * b * a for g, (b, a) in zip(groups, plan))
        if size <= size_limit and bops <= bops_limit:
            v = sum(values[k][b] + act_values[k][a] for k, (b, a) in enumerate(plan))
            if best is None or v > best:
                best, best_plan = v, plan
    return best, best_plan


@pytest.mark.parametrize("seed", range(40))
def test_joint_allocation_is_exact(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5))
    bits, acts = (2, 4, 8), tuple(sorted(rng.choice([2, 4, 6, 8], size=int(rng.integers(2, 4)), replace=False)))
    groups = [GroupSpec(f"g{k}", int(rng.integers(10, 100)), int(rng.integers(0, 1000)), 1.0, bits, act_choices=acts)
              for k in range(n)]
    values = [{b: float(-rng.random() * 2.0 ** -b) for b in bits} for _ in groups]
    act_values = [{a: float(-rng.random() * 2.0 ** -a) for a in acts} for _ in groups]
    size_limit = int(sum(g.params for g in groups) * rng.uniform(3, 7))
    bops_limit = int(sum(g.macs for g in groups) * rng.uniform(10, 50))
    want, plan = brute_force(groups, values, act_values, size_limit, bops_limit)
    if want is None:
        with pytest.raises(OmpqValueError):
            solve(groups, [SizeConstraint(size_limit), BopsConstraint(bops_limit)], values=values,
                  act_values=act_values)
        return
    got = solve(groups, [SizeConstraint(size_limit), BopsConstraint(bops_limit)], values=values, act_values=act_values)
    assert got.objective == pytest.approx(want, abs=1e-9)
    assert got.bops == sum(g.macs * b * a for g, b, a in zip(groups, got.bits, got.act_bits)) <= bops_limit
    assert all(a in acts for a in got.act_bits)


def test_weights_score_bits_and_act_bits_alike():
    # one group, room for W8A4 or W4A8 (same BOPs): weights tie them, the tie-break takes more weight bits
    g = [GroupSpec("a", 10, 100, 1.0, (4, 8), act_choices=(4, 8))]
    a = solve(g, [BopsConstraint(100 * 32)])
    assert (a.bits, a.act_bits) == ([8], [4]) and a.objective == 12
    a = solve(g, [BopsConstraint(100 * 64)])
    assert (a.bits, a.act_bits) == ([8], [8]) and a.objective == 16
    with pytest.raises(OmpqValueError, match="act_values scores activation bits, but no group has act_choices"):
        solve([GroupSpec("a", 10, 100, 1.0, (4, 8))], [BopsConstraint(10**6)], act_values=[{4: 0.0}])


# --------------------------------------------------------------------------- plan() and quantize()


@pytest.fixture(scope="module")
def mlp_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return model, torch.randn(64, 16)


@pytest.mark.parametrize("method", ["output_error", "ompq", "verified"])
def test_plan_chooses_activation_bits_and_quantize_follows(mlp_and_data, method):
    model, x = mlp_and_data
    macs = 16 * 32 + 32 * 32 + 32 * 4
    budget = int(macs * 5 * 6)  # between W4A4 (16 per MAC) and W8A8 (64)
    p = ompq_ext.plan(model, [x], f"{budget}BOPs", bits=range(2, 9), act_bits=(4, 8), method=method, progress=False)
    assert p.settings.act_bits == [4, 8]
    assert set(p.act_bits.values()) <= {4, 8} and all(x.act_bits in (4, 8) for x in p.layers)
    assert p.totals.bops == sum(x.macs * x.bits * x.act_bits for x in p.layers) <= budget
    assert "act" in p.summary().splitlines()[0]
    q = ompq_ext.quantize(model, p, [x], progress=False)
    for layer in p.layers:
        assert q.get_submodule(layer.name).input_quantizer.bits == layer.act_bits
    r = ompq_ext.quant_report(q)
    assert r["bops"] == p.totals.bops and r["size_bits"] == p.totals.size_bits
    assert [row["act_bits"] for row in r["layers"]] == [x.act_bits for x in p.layers]
    # quantize(act_bits=...) overrides the plan's choices
    q8 = ompq_ext.quantize(model, p, [x], act_bits=8, progress=False)
    assert all(m.input_quantizer.bits == 8 for m in q8.modules() if isinstance(m, QuantLayer))


def test_a_plan_with_activation_bits_round_trips(mlp_and_data, tmp_path):
    model, x = mlp_and_data
    p = ompq_ext.plan(model, [x], "60000BOPs", bits=range(2, 9), act_bits=(4, 6, 8), method="output_error",
                      progress=False)
    p.save(tmp_path / "p.json")
    back = ompq_ext.Plan.load(tmp_path / "p.json")
    assert back.act_bits == p.act_bits and back.settings.act_bits == [4, 6, 8]


def test_methods_that_do_not_score_activation_bits_say_so(mlp_and_data):
    model, x = mlp_and_data
    with pytest.raises(OmpqValueError, match="'kl' method does not score them"):
        ompq_ext.plan(model, [x], "60000BOPs", act_bits=(4, 8), method="kl", progress=False)
    names = ompq_ext.plan(model, [x], "4bits", progress=False).layer_names
    table = GivenScores(values={n: {b: -2.0 ** -b for b in range(2, 9)} for n in names})
    with pytest.raises(OmpqValueError, match="does not score them"):
        ompq_ext.plan(model, [x], "60000BOPs", bits=range(2, 9), act_bits=(4, 8), method=table, progress=False)
    with_acts = GivenScores(values={n: {b: -2.0 ** -b for b in range(2, 9)} for n in names},
                            act_values={n: {a: -2.0 ** -a for a in (4, 8)} for n in names})
    p = ompq_ext.plan(model, [x], "60000BOPs", bits=range(2, 9), act_bits=(4, 8), method=with_acts, progress=False)
    assert p.totals.bops <= 60000
    for bad in [(4, 40), (), "8", (True,)]:
        with pytest.raises(OmpqValueError, match="act_bits"):
            ompq_ext.plan(model, [x], "4bits", act_bits=bad, progress=False)


def test_joint_plan_is_at_least_as_accurate_as_the_best_weight_only_plan_on_mnist1d():
    """The issue's test: a BOPs budget between all-W4A4 and all-W8A8 on the bundled MNIST-1D model; the plan
    choosing activation bits from (4, 6, 8) against the best plan with every input at 4, 6 or 8 bits."""
    from ompq_ext.demo import load_demo

    model, calib, x_test, y_test = load_demo()
    w4a4 = ompq_ext.plan(model, [calib], "4bits", bits=[4], act_bits=4, method="ompq", progress=False).totals.bops
    w8a8 = ompq_ext.plan(model, [calib], "8bits", bits=[8], act_bits=8, method="ompq", progress=False).totals.bops
    budget = f"{int(w4a4 + 0.3 * (w8a8 - w4a4))}BOPs"

    def accuracy(p):
        q = ompq_ext.quantize(model, p, [calib], progress=False)
        assert ompq_ext.quant_report(q)["bops"] == p.totals.bops
        with torch.no_grad():
            return (q(x_test).argmax(1) == y_test).float().mean().item()

    joint = ompq_ext.plan(model, [calib], budget, bits=range(2, 9), act_bits=(4, 6, 8), progress=False)
    assert joint.settings.method == "verified" and len(set(joint.act_bits.values())) > 1  # a mixed choice
    weight_only = {a: ompq_ext.plan(model, [calib], budget, bits=range(2, 9), act_bits=a, progress=False)
                   for a in (4, 6, 8)}
    # its candidates hold each weight-only plan's (every candidate's plan at each one activation bit-width,
    # and uniform precision at each), and the one that moves the outputs least (inputs quantized too) won
    divergences = joint.settings["divergences"]
    for a in (4, 6, 8):
        assert {f"{c} A{a}" for c in joint.settings["candidates"]} <= set(divergences)
        assert any(name.startswith("uniform") and name.endswith(f" A{a}") for name in divergences)
    assert divergences[joint.settings["chosen"]] == min(divergences.values())
    # and on the test set it is at least as accurate as the best of them
    assert accuracy(joint) >= max(accuracy(p) for p in weight_only.values())
