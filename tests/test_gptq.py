"""GPTQ (`ompq_ext.quant.gptq`, `quantize(method="gptq")`): the rounding equals a direct numpy
implementation of the paper's update (the inverse Hessian updated by Gaussian elimination, one column at a
time, no Cholesky, no blocks), the input moment of a convolution is that of its unfolded patches, and in a
model GPTQ's rounding lowers each layer's output error below round to nearest's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ompq_ext
from ompq_ext import models
from ompq_ext.errors import OmpqValueError
from ompq_ext.quant.gptq import gptq_round, input_rows
from ompq_ext.quant.modules import QuantLayer, WeightQuantizer
from ompq_ext.quant.ops import quant_range


def numpy_gptq(W, H, S, bits, damp=0.01, act_order=False):
    """GPTQ as the paper states it: quantize column q, move the remaining columns by -err * Hinv[q, :] /
    Hinv[q, q], remove q from the inverse Hessian by one step of Gaussian elimination."""
    qmin, qmax = quant_range(bits, signed=True)
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    k = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    H += damp * np.mean(np.diag(H)) * np.eye(k)
    Hinv = np.linalg.inv(H)
    Q = np.zeros_like(W)
    for q in order:
        codes = np.clip(np.round(W[:, q] / S[:, q]), qmin, qmax)
        Q[:, q] = codes
        err = (W[:, q] - codes * S[:, q]) / Hinv[q, q]
        W -= np.outer(err, Hinv[q, :])
        Hinv -= np.outer(Hinv[:, q], Hinv[q, :]) / Hinv[q, q]
    return Q


def layer_problem(seed, out, k, rows=200, dead=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k))
    X = rng.standard_normal((rows, k)) @ mix / np.sqrt(k)  # correlated inputs, as real layers see
    X[:, :dead] = 0.0
    W = rng.standard_normal((out, k)) * rng.uniform(0.5, 2.0, (out, 1))
    return W, X.T @ X / rows


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("block_size, act_order, group", [(128, False, None), (4, False, None), (5, True, None),
                                                          (128, True, 8), (3, False, 8)])
def test_rounding_equals_the_direct_numpy_implementation(seed, bits, block_size, act_order, group):
    out, k = 7, 21
    W, H = layer_problem(seed, out, k, dead=2 if seed % 2 else 0)
    qmax = quant_range(bits, signed=True)[1]
    if group is None:
        S = np.repeat(np.abs(W).max(1, keepdims=True) / qmax, k, axis=1)
    else:  # one scale per group of 8 columns (the last one shorter)
        S = np.concatenate([np.repeat(np.abs(W[:, g:g + group]).max(1, keepdims=True) / qmax * 0.9,
                                      min(group, k - g), axis=1) for g in range(0, k, group)], axis=1)
    got = gptq_round(torch.from_numpy(W), torch.from_numpy(H), torch.from_numpy(S), bits, block_size=block_size,
                     act_order=act_order)
    want = numpy_gptq(W, H, S, bits, act_order=act_order)
    assert np.array_equal(got.numpy(), want)
    if seed % 2:
        assert np.all(want[:, :2] == 0)  # columns whose input is always zero
    # and it is not round to nearest (the error feedback changed some codes)
    if bits < 8:
        assert not np.array_equal(want, np.clip(np.round(W / S), -qmax - 1, qmax))


def test_rounding_lowers_the_output_error_below_round_to_nearest():
    for seed in range(5):
        W, H = layer_problem(seed, 16, 48)
        S = np.repeat(np.abs(W).max(1, keepdims=True) / 3, 48, axis=1)
        codes = gptq_round(torch.from_numpy(W), torch.from_numpy(H), torch.from_numpy(S), 3).numpy()
        rtn = np.clip(np.round(W / S), -4, 3)

        def error(c):
            d = W - c * S
            return np.einsum("ok,kl,ol->", d, H, d)
        assert error(codes) < 0.8 * error(rtn)


def test_a_moment_that_is_not_positive_definite_is_refused():
    W = torch.randn(3, 4, dtype=torch.float64)
    H = -torch.eye(4, dtype=torch.float64)
    with pytest.raises(OmpqValueError, match="not positive definite.*damp"):
        gptq_round(W, H, torch.ones(3, 4, dtype=torch.float64), 4)


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 5, 3, padding=1), (4, 3, 9, 7)),
    (nn.Conv2d(3, 4, (2, 3), stride=2, dilation=(2, 1), padding=(1, 2)), (2, 3, 11, 10)),
    (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 6, 6)),
    (nn.Conv2d(2, 3, 3, padding="same", padding_mode="circular"), (2, 2, 5, 6)),
    (nn.Conv1d(3, 6, 5, stride=2, padding=2), (4, 3, 17)),
    (nn.Conv1d(3, 2, 3, dilation=3, padding="same"), (2, 3, 12)),
    (nn.Linear(6, 4), (3, 5, 6)),
])
def test_input_rows_give_the_layer_output(layer, shape):
    """sum over outputs of (layer(x; dW) without bias)^2 == sum over rows of (dW_flat @ row)^2."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    layer = layer.double()
    dW = torch.randn_like(layer.weight)
    rows = input_rows(layer, x)
    with torch.no_grad():
        layer.bias.zero_()
        layer.weight.copy_(dW)
        want = layer(x).square().sum()
    got = (rows @ dW.reshape(dW.shape[0], -1).T).square().sum()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- in a model


def correlated_images(n, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return F.interpolate(low, size=8, mode="bilinear") + 0.1 * torch.randn(n, 3, 8, 8, generator=g)


@pytest.fixture(scope="module")
def resnet_and_data():
    torch.manual_seed(0)
    model = models.ResNet((1, 1), (8, 16), dims=2, in_channels=3, num_classes=5, imagenet_stem=False)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(correlated_images(64, 1))
    return model.eval(), correlated_images(128, 2)


@pytest.mark.parametrize("group_size", [None, 16])
def test_gptq_in_quantize_beats_round_to_nearest_layer_by_layer(resnet_and_data, group_size):
    model, x = resnet_and_data
    before = copy.deepcopy(model.state_dict())
    p = ompq_ext.plan(model, [x], "3bits", bits=[3], method="ompq", group_size=group_size, progress=False)
    records = []
    q = ompq_ext.quantize(model, p, [x], method="gptq", records=records, progress=False)
    rtn = ompq_ext.quantize(model, p, [x], method="rtn", progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched
    assert [r["name"] for r in records] == p.layer_names  # every layer, in call order
    assert all(r["mse_gptq"] <= r["mse_rtn"] for r in records if r["kept"] == "gptq")
    assert sum(r["kept"] == "gptq" for r in records) >= len(records) - 1
    assert sum(r["mse_gptq"] for r in records) < 0.85 * sum(r["mse_rtn"] for r in records)
    for name, ql in q.named_modules():
        if isinstance(ql, QuantLayer):
            w = ql.layer.weight
            assert torch.equal(ql.weight_quantizer(w), w)  # baked onto the grid: the quantizer maps it to itself
            assert isinstance(ql.weight_quantizer, WeightQuantizer) and ql.weight_quantizer.group_size == group_size
    with torch.no_grad():
        err_gptq = (q(x) - model(x)).square().mean()
        err_rtn = (rtn(x) - model(x)).square().mean()
    assert err_gptq < err_rtn
    r = ompq_ext.quant_report(q)
    assert r["size_bits"] == p.totals.size_bits <= p.budgets[0].limit


def test_gptq_options_are_checked(resnet_and_data):
    model, x = resnet_and_data
    p = ompq_ext.plan(model, [x], "4bits", bits=[4], method="ompq", progress=False)
    for bad, match in [(dict(damp=0), "damp"), (dict(block_size=0), "block_size"), (dict(act_order="yes"), "act_order"),
                       (dict(iters=10), "iters.*adaround")]:
        with pytest.raises(OmpqValueError, match=match):
            ompq_ext.quantize(model, p, [x], method="gptq", progress=False, **bad)
    with pytest.raises(OmpqValueError, match="method='gptq' needs calibration data"):
        ompq_ext.quantize(model, p, method="gptq", act_bits=0, progress=False)
    q = ompq_ext.quantize(model, p, [x], method="gptq", act_order=True, act_bits=0, progress=False)
    assert all(ql.input_quantizer is None for ql in q.modules() if isinstance(ql, QuantLayer))


def test_layers_gptq_cannot_take_stay_at_round_to_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, padding=1), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.randn(64, 4, 6, 6)
    p = ompq_ext.plan(model, [x], "4bits", bits=[4], method="ompq", progress=False)
    records = []
    with pytest.warns(UserWarning, match=r"gptq: 1 layer\(s\) stay at round to nearest.*: 0"):
        q = ompq_ext.quantize(model, p, [x], method="gptq", records=records, progress=False)
    assert [r["name"] for r in records] == ["2"]
    rtn = ompq_ext.quantize(model, p, [x], method="rtn", progress=False)
    assert torch.equal(q[0].layer.weight, rtn[0].layer.weight)
