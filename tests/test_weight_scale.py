"""Tests of the MSE weight-scale search: `weight_scale(..., method="mse")`, which on the CPU runs the core
kernel `_core.mse_weight_scales` (cpp/src/fake_quant.cpp, fake_quant_kernels.inc).

Two references:
  * `grid_errors`: every candidate scale of the grid quantized by torch's own
    `fake_quantize_per_channel_affine` (float32, the arithmetic the kernel must match) and its squared
    error summed in float64. The kernel's pick must reach the least of them (within 1e-6, the
    summation order differs).
  * `old_weight_scale`: the torch implementation the kernel replaced (float32 error sums). The picks
    must agree on every channel but for near-ties, which the two summations may break differently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ompq_ext import _core as core
from ompq_ext.errors import OmpqValueError
from ompq_ext.models import resnet18
from ompq_ext.quant.scales import _MSE_GRID, _mse_search_torch, weight_scale
from ompq_ext.quant.ops import fake_quantize, quant_range

REL = 1e-6  # the kernel's pick may exceed the least float64 grid error by this (summation order)
NEAR_TIE = 1e-5  # where the old float32 search picks otherwise, its pick must be this close to the least
HYP = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def old_weight_scale(weight, bits, axis=0):
    """The torch implementation before the core kernel, verbatim: 81 fake quantizations, float32 sums."""
    _, qmax = quant_range(bits, signed=True)
    flat = weight.detach().float().movedim(axis, 0)
    flat = flat.reshape(flat.shape[0], -1)
    base = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    best_err = torch.full((flat.shape[0],), math.inf, device=flat.device)
    best = base.clone()
    for ratio in _MSE_GRID:
        s = base * ratio
        err = (fake_quantize(flat, s, bits=bits, axis=0) - flat).square().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def flat_of(weight, axis):
    flat = weight.detach().float().movedim(axis, 0)
    return flat.reshape(flat.shape[0], -1).contiguous()


def sq_error(flat, scales, bits):
    """float64 sum per channel of (q(w) - w)^2, q = torch's per-channel fake quantization (zero point 0)."""
    qmin, qmax = quant_range(bits, signed=True)
    zero = torch.zeros(flat.shape[0], dtype=torch.int32)
    y = torch.fake_quantize_per_channel_affine(flat, scales.float(), zero, 0, qmin, qmax)
    return (y.double() - flat.double()).square().sum(dim=1)


def grid_errors(flat, bits):
    """(candidates, errors), both (ratios, channels): every scale base * ratio and its float64 error, the
    quantization written out in torch float32 ops (round half to even of x * (1/s), clamp, times s;
    check_search checks it against torch's fake-quant op at the picked scale)."""
    qmin, qmax = quant_range(bits, signed=True)
    base = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    cands = torch.stack([base * r for r in _MSE_GRID])
    x64 = flat.double()
    errs = [((torch.round(flat * (1.0 / c)[:, None]).clamp(qmin, qmax) * c[:, None]).double() - x64).square().sum(1)
            for c in cands]
    return cands, torch.stack(errs)


def check_search(weight, bits, axis=0, max_mismatch=0.0):
    """weight_scale's pick: a grid candidate of least float64 error (within REL), the same pick as the
    old implementation except on near-ties (at most `max_mismatch` of the channels)."""
    flat = flat_of(weight, axis)
    got = weight_scale(weight, bits, "mse", axis)
    assert got.dtype == torch.float32 and got.shape == (flat.shape[0],)
    cands, errs = grid_errors(flat, bits)
    assert bool((cands == got).any(dim=0).all()), "a picked scale is not base * ratio"
    least = errs.min(dim=0).values
    err_got = sq_error(flat, got, bits)
    worst = (err_got / least.clamp_min(1e-300)).max().item()
    assert bool((err_got <= least * (1 + REL)).all()), f"a pick is worse than the grid's best by {worst - 1:.3g}"
    # The first minimum: no earlier candidate has a clearly smaller error than the pick.
    first = (cands == got).float().argmax(dim=0)
    torch.testing.assert_close(errs.gather(0, first[None])[0], err_got, rtol=0, atol=0)
    earlier = torch.arange(len(cands))[:, None] < first[None, :]
    assert bool((~earlier | (errs >= err_got * (1 - REL))).all()), "an earlier ratio is clearly better"
    old = old_weight_scale(weight, bits, axis)
    differ = got != old
    if differ.any():
        err_old = sq_error(flat, old, bits)
        assert bool((err_old[differ] <= least[differ] * (1 + NEAR_TIE)).all()), "a mismatch that is not a near-tie"
    assert differ.sum().item() <= max_mismatch * flat.shape[0], f"{differ.sum().item()} of {flat.shape[0]} differ"
    # The kernel's own errors are those float64 minima, summed in another order.
    qmin, qmax = quant_range(bits, signed=True)
    base = (flat.abs().amax(dim=1).clamp_min(1e-12) / qmax).numpy()
    s, e = core.mse_weight_scales(flat.numpy(), base, _MSE_GRID.numpy(), qmin, qmax, return_errors=True)
    np.testing.assert_array_equal(s, got.numpy())
    np.testing.assert_allclose(e, err_got.numpy(), rtol=1e-12, atol=0)
    return got


# --------------------------------------------------------------------------- data


def outliers(shape, seed, frac=0.01, size=20.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < frac
    return torch.where(mask, w * size, w)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_conv_weights_axis0(bits):
    w = outliers((48, 16, 3, 3), bits)
    w[5] = 0.0  # a channel of zeros: every ratio gives 0, the first (1.0) wins
    w[7] = torch.full_like(w[7], 0.25)  # a constant channel
    w[9].view(-1)[3] = 1e3  # one huge outlier: the search must clip the rest well
    got = check_search(w, bits)
    base = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / quant_range(bits, True)[1]
    assert got[5] == base[5]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(200, 33), (37, 17), (64, 1), (1, 1000)])
def test_2d_weights_axis1(bits, shape):
    """An (in, out) weight (GPT-2's Conv1D): the channels are the columns; lengths off the 16-lane blocks."""
    w = outliers(shape, 1 + bits, frac=0.05, size=8.0)
    if shape[1] > 2:
        w[:, 2] = 0.0
    check_search(w, bits, axis=1)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_depthwise_and_linear(bits):
    check_search(outliers((32, 1, 3, 3), 11), bits)  # 9 elements per channel
    check_search(torch.rand(10, 1000) - 0.5, bits)  # uniform
    check_search(torch.distributions.StudentT(2.0).sample((24, 300)), bits)  # heavy-tailed


def test_real_looking_resnet18_weights():
    """ResNet-18's weights (its initialisation): the full check on a layer of each kind and size at 2 and
    4 bits; the same picks as the old implementation on all its conv / linear weights (11.7M) at 3 bits."""
    torch.manual_seed(0)
    model = resnet18()
    for name in ("stem.0", "layers.0.0.conv1", "layers.1.0.downsample.0", "layers.2.1.conv2", "layers.3.0.conv1", "fc"):
        w = model.get_parameter(name + ".weight")
        for bits in (2, 4):
            check_search(w, bits, max_mismatch=0.01)
    weights = [p for p in model.parameters() if p.dim() > 1]
    got = torch.cat([weight_scale(w, 3) for w in weights])
    old = torch.cat([old_weight_scale(w, 3) for w in weights])
    assert (got != old).sum().item() <= 0.01 * got.numel()


def test_real_pretrained_minilm_weights(monkeypatch):
    """A trained model's weights (all-MiniLM-L6-v2, where installed): its first transformer layer at 3 bits."""
    from pretrained import minilm_and_batch

    model, _ = minilm_and_batch(monkeypatch, 1)
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and ".layer.0." in n]
    assert len(weights) == 6
    for w in weights:
        check_search(w, 3, max_mismatch=0.01)


@st.composite
def weights(draw):
    channels = draw(st.integers(1, 12))
    k = draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["normal", "outliers", "integers", "tiny", "sparse"]))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, k))
    if kind == "outliers":
        w[rng.random(w.shape) < 0.05] *= 50.0
    elif kind == "integers":  # few distinct values: many equal errors across ratios
        w = rng.integers(-3, 4, w.shape).astype(np.float64)
    elif kind == "tiny":
        w *= 1e-20
    elif kind == "sparse":
        w[rng.random(w.shape) < 0.8] = 0.0
    if draw(st.booleans()):
        w[rng.integers(channels)] = 0.0
    return torch.from_numpy(w.astype(np.float32))


@HYP
@given(w=weights(), bits=st.integers(2, 8), transpose=st.booleans())
def test_search_property(w, bits, transpose):
    """Any mismatch with the old search must be a near-tie: few-valued weights make real ties, which the
    float32 rounding of the ratios turns into near-ties (e.g. ratios 0.52 and 0.53 at 2 bits, errors
    21.5680001 and 21.5679998 in float64: the old float32 sums picked 0.52, the kernel 0.53)."""
    if transpose:
        check_search(w.t(), bits, axis=1, max_mismatch=1.0)
    else:
        check_search(w, bits, max_mismatch=1.0)


# --------------------------------------------------------------------------- kernel


def test_other_dtypes_and_views():
    """float64 / bfloat16 / non-contiguous CPU weights: as the old implementation (after .float())."""
    w = outliers((16, 8, 3, 3), 3)
    for weight, axis in ((w.double(), 0), (w.bfloat16(), 0), (w.permute(1, 0, 2, 3), 1)):
        torch.testing.assert_close(weight_scale(weight, 4, "mse", axis), old_weight_scale(weight, 4, axis),
                                   rtol=0, atol=0)


def test_torch_search_is_the_kernel_search():
    """The torch search kept for CUDA tensors, run on the CPU: the same picks (these weights hold no near-tie)."""
    torch.manual_seed(3)
    flat = outliers((64, 200), 5)
    for bits in (2, 4, 8):
        qmax = quant_range(bits, True)[1]
        base = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
        torch.testing.assert_close(_mse_search_torch(flat, base, bits), weight_scale(flat, bits), rtol=0, atol=0)


def test_isas_and_threads_give_identical_bits():
    flat = outliers((300, 4099), 7).numpy()  # over the one-thread threshold
    base = (np.abs(flat).max(axis=1) / np.float32(7)).astype(np.float32)
    ratios = _MSE_GRID.numpy()
    want = core.mse_weight_scales(flat, base, ratios, -8, 7, return_errors=True, isa="generic", num_threads=1)
    for isa in core.available_isas():
        for threads in (0, 1, 2, 3):
            got = core.mse_weight_scales(flat, base, ratios, -8, 7, return_errors=True, isa=isa, num_threads=threads)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_first_minimum_and_edge_sizes():
    # x = 1 with scales 4 and 8 rounds to 0 both times: two distinct scales of exactly equal error.
    w = np.array([[1.0], [0.0]], np.float32)
    base = np.array([4.0, 4.0], np.float32)
    for ratios, want in (([1.0, 2.0], 4.0), ([2.0, 1.0], 8.0)):
        s, e = core.mse_weight_scales(w, base, np.array(ratios, np.float32), -8, 7, return_errors=True)
        assert s[0] == want and e[0] == 1.0  # the first of the tied pair
        assert s[1] == base[1] * ratios[0] and e[1] == 0.0  # all zero: the first ratio
    ratios = _MSE_GRID.numpy()
    empty_rows = core.mse_weight_scales(np.zeros((3, 0), np.float32), np.ones(3, np.float32), ratios, -8, 7,
                                        return_errors=True)
    np.testing.assert_array_equal(empty_rows[0], np.ones(3, np.float32))
    np.testing.assert_array_equal(empty_rows[1], np.zeros(3))
    assert core.mse_weight_scales(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), ratios, -8, 7).shape == (0,)


def test_clamps_to_the_grid():
    """One value per channel far above the top of the grid: only the clamp keeps its error finite-sized."""
    w = np.array([[10.0, 0.1, -0.1, 0.05]], np.float32)
    base = np.array([0.01], np.float32)  # 10 / base = 1000 >> qmax
    s, e = core.mse_weight_scales(w, base, np.array([1.0], np.float32), -8, 7, return_errors=True)
    y = np.clip(np.rint(w * (np.float32(1) / s[0])), -8, 7) * s[0]
    assert e[0] == pytest.approx(((y.astype(np.float64) - w) ** 2).sum(), rel=1e-15)


@pytest.mark.parametrize("args,match", [
    ({"base": np.array([0.0, 1.0], np.float32)}, "base scale\\[0\\].*positive"),
    ({"base": np.array([1.0, np.nan], np.float32)}, "base scale\\[1\\]"),
    ({"base": np.array([1.0, np.inf], np.float32)}, "base scale\\[1\\]"),
    ({"base": np.array([1.0, 1e-45], np.float32)}, "finite inverse"),
    ({"ratios": np.zeros(0, np.float32)}, "ratios must be a non-empty"),
    ({"ratios": np.array([1.0, -0.5], np.float32)}, "ratio\\[1\\]"),
    ({"ratios": np.array([np.inf], np.float32)}, "ratio\\[0\\]"),
    ({"base": np.ones(3, np.float32)}, "one scale per row"),
    ({"w": np.ones((2, 3), np.float64)}, "w must be a float32"),
    ({"w": np.ones(6, np.float32)}, "w must be 2-D"),
    ({"w": np.ones((3, 2), np.float32).T}, "C-contiguous"),
    ({"w": [[1.0, 2.0], [3.0, 4.0]]}, "numpy array"),
    ({"qmin": 8, "qmax": 7}, "qmin"),
    ({"num_threads": -1}, "num_threads"),
    ({"isa": "sse"}, "isa"),
])
def test_bad_arguments(args, match):
    kw = {"w": np.ones((2, 3), np.float32), "base": np.ones(2, np.float32), "ratios": np.ones(1, np.float32),
          "qmin": -8, "qmax": 7}
    kw.update(args)
    with pytest.raises(OmpqValueError, match=match):
        core.mse_weight_scales(**kw)


def test_bad_weights_through_weight_scale():
    w = torch.ones(4, 4)
    w[1, 2] = math.inf
    with pytest.raises(OmpqValueError, match="base scale\\[1\\]"):
        weight_scale(w, 4)
