"""Group-wise weight quantization: ``fake_quantize(..., group_size=)`` equals torch's per-tensor fake
quantization of every group taken one by one (forward bit for bit, and the STE/LSQ gradients), the
scales of a group are those of the group alone, and plan() counts the scales so that the quantized
model's real size (quant_report) never exceeds the budget."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ompq_ext
from ompq_ext import models
from ompq_ext.errors import OmpqValueError
from ompq_ext.quant.modules import QuantLayer, WeightQuantizer
from ompq_ext.quant.ops import fake_quantize, quant_range
from ompq_ext.quant.reconstruct import AdaRoundQuantizer
from ompq_ext.quant.scales import weight_scale
from quant_helpers import scale_bits_of


def groups_of(x: torch.Tensor, axis: int, group_size: int):
    """(channel, slice of that channel's flattened values) for every group, by plain indexing."""
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return [(c, slice(g, min(g + group_size, flat.shape[1])))
            for c in range(flat.shape[0]) for g in range(0, flat.shape[1], group_size)], flat


def reference(x, scale, bits, axis, group_size):
    """torch.fake_quantize_per_tensor_affine on each group alone."""
    qmin, qmax = quant_range(bits, signed=True)
    groups, flat = groups_of(x, axis, group_size)
    out = torch.empty_like(flat)
    for k, (c, cols) in enumerate(groups):
        out[c, cols] = torch.fake_quantize_per_tensor_affine(flat[c, cols], float(scale[k]), 0, qmin, qmax)
    return out.reshape(x.movedim(axis, 0).shape).movedim(0, axis)


SHAPES = [((6, 20), 0), ((6, 20), 1), ((5, 3, 3, 3), 0), ((4, 7, 5), 0), ((3, 64), 0), ((2, 9, 2, 2), 1)]


@settings(max_examples=60, deadline=None)
@given(shape_axis=st.sampled_from(SHAPES), group_size=st.sampled_from([1, 2, 4, 8, 16, 32, 128]),
       bits=st.integers(2, 8), seed=st.integers(0, 2**16), method=st.sampled_from(["minmax", "mse"]))
def test_forward_equals_torch_per_group(shape_axis, group_size, bits, seed, method):
    shape, axis = shape_axis
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    scale = weight_scale(x, bits, method, axis, group_size)
    groups, flat = groups_of(x, axis, group_size)
    assert scale.numel() == len(groups)
    got = fake_quantize(x, scale, bits=bits, axis=axis, group_size=group_size)
    assert torch.equal(got, reference(x, scale, bits, axis, group_size))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_a_group_scale_is_the_group_alone(bits):
    w = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(bits)) * torch.arange(1, 9).reshape(8, 1, 1)
    qmax = quant_range(bits, True)[1]
    for method in ("minmax", "mse"):
        scale = weight_scale(w, bits, method, 0, group_size=4)
        groups, flat = groups_of(w, 0, 4)
        for k, (c, cols) in enumerate(groups):
            alone = weight_scale(flat[c, cols].reshape(1, -1), bits, method)  # a short last group: no padding
            assert scale[k] == alone[0], (method, k)
        if method == "minmax":
            assert torch.equal(scale, torch.stack([flat[c, cols].abs().max() / qmax for c, cols in groups]))


def test_gradients_equal_torch_lsq_per_group():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 3, 3) * 2
    bits, group_size, grad_factor = 3, 4, 0.3
    scale = weight_scale(x, bits, "mse", 0, group_size) * 0.8  # some values clip
    g_out = torch.randn_like(x)
    xa, sa = x.clone().requires_grad_(), scale.clone().requires_grad_()
    (fake_quantize(xa, sa, bits=bits, axis=0, group_size=group_size, grad_factor=grad_factor) * g_out).sum().backward()
    qmin, qmax = quant_range(bits, True)
    groups, flat = groups_of(x, 0, group_size)
    g_flat = g_out.reshape(5, -1)
    gx, gs = torch.zeros_like(flat), torch.zeros_like(scale)
    for k, (c, cols) in enumerate(groups):
        xi = flat[c, cols].clone().requires_grad_()
        si = scale[k:k + 1].clone().requires_grad_()
        y = torch._fake_quantize_learnable_per_tensor_affine(xi, si, torch.zeros(1), qmin, qmax, grad_factor)
        (y * g_flat[c, cols]).sum().backward()
        gx[c, cols], gs[k] = xi.grad, si.grad[0]
    torch.testing.assert_close(xa.grad, gx.reshape(x.shape), rtol=0, atol=0)
    torch.testing.assert_close(sa.grad, gs, rtol=1e-5, atol=1e-6)


def test_bad_group_arguments():
    x = torch.randn(4, 8)
    with pytest.raises(OmpqValueError, match="group_size must be a positive integer"):
        fake_quantize(x, torch.ones(8), bits=4, axis=0, group_size=0)
    with pytest.raises(OmpqValueError, match="group_size needs axis"):
        fake_quantize(x, torch.ones(1), bits=4, group_size=4)
    with pytest.raises(OmpqValueError, match="4 channels in groups of 4 need 8 scales, got 4"):
        fake_quantize(x, torch.ones(4), bits=4, axis=0, group_size=4)
    with pytest.raises(OmpqValueError, match="group_size"):
        ompq_ext.plan(nn.Sequential(nn.Linear(8, 4)), [torch.randn(8, 8)], "4bits", group_size=True, progress=False)


def test_quantizers_take_groups():
    w = torch.randn(6, 10)
    q = WeightQuantizer(w, 4, "mse", 0, group_size=4)
    assert q.scale.numel() == 6 * 3 and "group_size=4" in repr(q)
    cols = q.column_scales(6, 10)
    assert cols.shape == (6, 10) and torch.equal(cols[:, 8:], q.scale.detach().reshape(6, 3)[:, 2:].expand(6, 2))
    assert torch.equal(q(w), w.new_tensor(0) + cols * torch.round(w / cols).clamp(-8, 7))
    a = AdaRoundQuantizer(w, q.scale, 4, 0, group_size=4)
    a.hard = True  # starts at round to nearest
    assert torch.equal(a(w), q(w))
    with pytest.raises(OmpqValueError, match="in groups of 4"):
        AdaRoundQuantizer(w, q.scale[:6], 4, 0, group_size=4)


# --------------------------------------------------------------------------- the budget holds, scales included


def models_and_inputs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 5))
    cnn = models.resnet1d(width=8)
    attention = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    return {"mlp": (mlp.eval(), torch.randn(64, 40)), "cnn": (cnn.eval(), torch.randn(64, 1, 40)),
            "attention": (attention.eval(), torch.randn(16, 6, 32))}


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
@pytest.mark.parametrize("group_size", [None, 8, 32])
@pytest.mark.parametrize("budget", ["3bits", "0.2", "2.5bits"])
def test_quantized_size_never_exceeds_the_budget(name, group_size, budget):
    model, x = models_and_inputs()[name]
    p = ompq_ext.plan(model, [x], budget, bits=range(2, 9), group_size=group_size, method="ompq", progress=False)
    assert p.settings.group_size == group_size and p.settings.scale_bits == 16
    assert p.totals.scale_bits == scale_bits_of(model, p, group_size)
    q = ompq_ext.quantize(model, p, [x], progress=False)
    wq = [m for m in q.modules() if isinstance(m, WeightQuantizer)]
    assert wq and all(m.group_size == group_size for m in wq)  # quantize() follows the plan's group size
    r = ompq_ext.quant_report(q)
    assert r["size_bits"] == p.totals.size_bits <= p.budgets[0].limit
    assert r["quantizer_bits"] == p.totals.scale_bits


def test_average_bits_budgets_add_the_scales_and_paper_accounting_counts_weights_only():
    model, x = models_and_inputs()["mlp"]
    planned = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    other = sum(m.bias.numel() for m in model if isinstance(m, nn.Linear))
    for group_size, per_weight in [(None, None), (8, 16 / 8), (32, None)]:
        p = ompq_ext.plan(model, [x], "4bits", bits=[4], group_size=group_size, method="ompq", progress=False)
        scales = scale_bits_of(model, p, group_size)
        assert p.totals.size_bits == 4 * planned + 32 * other + scales == p.budgets[0].limit  # uniform fits exactly
        assert p.totals.avg_bits == 4
        if per_weight:  # every row a multiple of 8: b + 16/group bits per weight, plus one scale per input
            assert scales == planned * per_weight + 16 * 3
    paper = ompq_ext.plan(model, [x], "4bits", bits=[4], scale_bits=0, method="ompq", progress=False)
    assert paper.totals.size_bits == 4 * planned + 32 * other and paper.totals.scale_bits == 0
    with pytest.raises(OmpqValueError, match="scale_bits"):
        ompq_ext.plan(model, [x], "4bits", scale_bits=8, progress=False)
    # A size budget in bytes is absolute: smaller groups leave fewer bits for the weights.
    limit = math.ceil(p.totals.size_bytes)
    coarse = ompq_ext.plan(model, [x], f"{limit}B", method="ompq", progress=False)
    fine = ompq_ext.plan(model, [x], f"{limit}B", group_size=8, method="ompq", progress=False)
    assert coarse.totals.size_bits <= 8 * limit and fine.totals.size_bits <= 8 * limit
    assert fine.totals.avg_bits < coarse.totals.avg_bits


def test_a_quantize_group_size_overrides_the_plans():
    model, x = models_and_inputs()["mlp"]
    p = ompq_ext.plan(model, [x], "4bits", bits=[4], method="ompq", progress=False)
    q = ompq_ext.quantize(model, p, [x], group_size=16, progress=False)
    layers = [m for m in q.modules() if isinstance(m, QuantLayer)]
    assert all(m.weight_quantizer.group_size == 16 for m in layers)
    assert ompq_ext.quant_report(q)["quantizer_params"] == sum(
        m.layer.weight.shape[0] * -(-m.layer.weight.shape[1] // 16) + 1 for m in layers)
