"""Calibration that does not depend on luck: padded positions of a masked text batch are left out of the
ranges (and of GPTQ's input moment), per-token dynamic ranges equal a per-row reference, and num_calib
is an upper bound as plan()'s num_samples is."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ompq_ext
from ompq_ext import models
from ompq_ext.errors import OmpqValueError
from ompq_ext.quant.gptq import input_moment
from ompq_ext.quant.modules import ActQuantizer, QuantLayer
from ompq_ext.quant.ops import quant_range
from ompq_ext.quant.padding import find_mask, padding_mask, valid_rows

PAD = 0


class Tagger(nn.Module):
    """Token embeddings -> two linear layers; the padding token's embedding is huge, as a padded
    position's activations can be, and its positions are computed but never used."""

    def __init__(self, as_dict: bool, mask_key: str = "attention_mask"):
        super().__init__()
        torch.manual_seed(0)
        self.as_dict, self.mask_key = as_dict, mask_key
        self.emb = nn.Embedding(12, 8)
        with torch.no_grad():
            self.emb.weight[PAD] = 1000.0
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, features=None, **kwargs):
        source = features if self.as_dict else kwargs
        input_ids, mask = source["input_ids"], source[self.mask_key]
        h = self.fc2(torch.relu(self.fc1(self.emb(input_ids))))
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


def text_batch(n=24, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 12, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask + PAD * (1 - mask), mask


@pytest.mark.parametrize("as_dict", [False, True])
def test_padded_positions_are_not_calibrated(as_dict):
    ids, mask = text_batch()
    model = Tagger(as_dict).eval()
    batch = {"input_ids": ids, "attention_mask": mask}
    p = ompq_ext.plan(model, [{"features": batch} if as_dict else batch], "4bits", bits=[4], method="ompq",
                      progress=False)
    calib = [{"features": batch}] if as_dict else [batch]
    q = ompq_ext.quantize(model, p, calib, act_calib="minmax", progress=False)
    real = model.emb(ids)[mask.bool()]
    fc1 = q.fc1.input_quantizer
    assert fc1.scale.item() == pytest.approx(real.abs().max().item() / 127, rel=1e-6)  # not 1000 / 127
    # The same batch with its mask under another name: the padding's 1000 sets the range.
    unmasked = {"input_ids": ids, "padding": mask}
    q2 = ompq_ext.quantize(Tagger(as_dict=False, mask_key="padding").eval(), p, [unmasked], act_calib="minmax",
                           progress=False)
    assert q2.fc1.input_quantizer.scale.item() == pytest.approx(1000 / 127, rel=1e-6)
    off = ompq_ext.quantize(model, p, calib, act_calib="minmax", mask_padding=False, progress=False)
    assert off.fc1.input_quantizer.scale.item() == pytest.approx(1000 / 127, rel=1e-6)
    with torch.no_grad():  # and the masked calibration is the better model on the real tokens
        ref = model(**({"features": batch} if as_dict else batch))
        err = (q(**({"features": batch} if as_dict else batch)) - ref).abs().max()
        err_unmasked = (q2(input_ids=ids, padding=mask) - ref).abs().max()
    assert err < 0.25 * err_unmasked


def test_gptq_moment_leaves_padding_out():
    ids, mask = text_batch()
    model = Tagger(as_dict=False).eval()
    p = ompq_ext.plan(model, [{"input_ids": ids, "attention_mask": mask}], "4bits", bits=[4], method="ompq",
                      progress=False)
    q = ompq_ext.quantize(model, p, act_bits=0, progress=False)
    got = input_moment(q, q.fc1.layer, (), {"input_ids": ids, "attention_mask": mask}, len(ids), chunk=7)
    X = model.emb(ids)[mask.bool()].double()
    torch.testing.assert_close(got, X.T @ X / X.shape[0], rtol=1e-12, atol=1e-9)


def test_valid_rows_only_for_tensors_shaped_like_the_mask():
    ids, mask = text_batch(4, 5)
    assert find_mask((), {"attention_mask": mask}) is mask and find_mask(({"attention_mask": mask},), {}) is mask
    assert find_mask((), {"attention_mask": mask[0]}) is None  # not (batch, positions)
    x3, x2, other = torch.randn(4, 5, 3), torch.randn(4, 5), torch.randn(4, 6, 3)
    with padding_mask((), {"attention_mask": mask}):
        assert torch.equal(valid_rows(x3), x3[mask.bool()])
        assert valid_rows(x2) is x2 and valid_rows(other) is other
    assert valid_rows(x3) is x3  # outside the block


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_ranges_are_per_token(bits, signed):
    torch.manual_seed(bits)
    x = torch.randn(3, 5, 16) * torch.logspace(-2, 2, 5).reshape(1, 5, 1)
    if not signed:
        x = x.abs()
    q = ActQuantizer(bits, "dynamic")
    q.observing = True
    q(x)
    q.observing = False
    q.finalize()
    assert q.signed == signed
    rows = x.reshape(-1, 16)
    qmin, qmax = quant_range(bits, signed)
    scale = rows.abs().amax(1) / qmax
    want = torch.fake_quantize_per_channel_affine(rows, scale, torch.zeros(15, dtype=torch.int32), 0, qmin, qmax)
    assert torch.equal(q(x), want.reshape(x.shape))
    per_tensor = ActQuantizer(bits, "minmax")
    per_tensor.observing = True
    per_tensor(x)
    per_tensor.observing = False
    per_tensor.finalize()
    def token_error(quantizer):  # relative error of each token, averaged
        return ((quantizer(x) - x).norm(dim=-1) / x.norm(dim=-1)).mean()
    assert token_error(q) < 0.2 * token_error(per_tensor)  # small tokens keep their values


def test_dynamic_is_for_linear_inputs_and_convolutions_keep_a_calibrated_range():
    torch.manual_seed(0)
    model, x = models.resnet1d(width=8).eval(), torch.randn(64, 1, 40)
    p = ompq_ext.plan(model, [x], "4bits", bits=[4], method="ompq", progress=False)
    q = ompq_ext.quantize(model, p, [x], act_calib="dynamic", progress=False)
    methods = {name: (type(m.layer).__name__, m.input_quantizer.method) for name, m in q.named_modules()
               if isinstance(m, QuantLayer)}
    assert {m for kind, m in methods.values() if kind == "Linear"} == {"dynamic"}
    assert {m for kind, m in methods.values() if kind == "Conv1d"} == {"mse"}


def test_num_calib_is_an_upper_bound():
    torch.manual_seed(0)
    model, x = models.resnet1d(width=8).eval(), torch.randn(20, 1, 40)
    p = ompq_ext.plan(model, [x], "4bits", bits=[4], method="ompq", progress=False)
    with pytest.warns(UserWarning, match="yielded 20 samples, fewer than num_calib=64: all 20 are used"):
        q = ompq_ext.quantize(model, p, [x], num_calib=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (256) is not the user's choice: no warning
        q_default = ompq_ext.quantize(model, p, [x], progress=False)
    for a, b in zip(q.modules(), q_default.modules()):
        if isinstance(a, QuantLayer):
            assert torch.equal(a.input_quantizer.scale, b.input_quantizer.scale)  # the same 20 samples
    with pytest.warns(UserWarning, match="fewer than num_calib=64"):
        ompq_ext.calibrate(q, [x], num_calib=64, progress=False)
    with pytest.raises(OmpqValueError, match="only 1 samples but num_calib=64 \\(at least 2\\)"):
        ompq_ext.quantize(model, p, [x[:1]], num_calib=64, progress=False)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_activation_mse_range_is_the_least_squared_error_on_the_grid(bits, signed):
    from ompq_ext.quant.scales import _MSE_GRID, activation_scale

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(5000, generator=g) ** 3  # heavy tails: clipping pays
    if not signed:
        x = x.abs()
    scale, got_signed = activation_scale(x, bits, "mse")
    assert got_signed == signed
    qmin, qmax = quant_range(bits, signed)
    top = float(x.abs().max())
    candidates = [torch.tensor([top / qmax], dtype=torch.float32) * r for r in _MSE_GRID]

    def error(s):  # float64 sum of the squared rounding error, an independent reference
        q = (x / s).round().clamp(qmin, qmax) * s
        return float((q.double() - x.double()).square().sum())
    errors = [error(s) for s in candidates]
    best = min(range(len(errors)), key=errors.__getitem__)
    assert scale == pytest.approx(float(candidates[best]), rel=1e-6)
    assert error(torch.tensor([scale])) <= min(errors) * (1 + 1e-9)
