"""Tests of fake quantization: the C++ kernels (`ompq_ext._core.fake_quant_*`) and the torch op
layer (`ompq_ext.quant.ops.fake_quantize`, `torch.ops.ompq_ext.fake_quant`).

References are independent: torch's own fake-quant ops (forward, STE, learnable LSQ ops) and a
float64 numpy evaluation of the LSQ formula. Where the arithmetic is the same (forward, STE mask)
the comparison is exact; the LSQ sums are compared within bounds derived below (`lsq_bounds`).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ompq_ext import _core as core
from ompq_ext.errors import OmpqError, OmpqTypeError, OmpqValueError
from ompq_ext.quant import ops
from ompq_ext.quant.ops import fake_quantize, quant_range

ISAS = core.available_isas()
BITS = [2, 3, 4, 5, 6, 7, 8, 16]
MODES = ["symmetric", "unsigned", "signed-offset"]  # z = 0 signed / z in [0, 2^b-1] unsigned / z != 0 signed
U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53
KBLOCK = 8192  # elements per block of the driver, the unit of its LSQ partial sums (cpp/src/fake_quant.cpp)

HYP = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- data


def qrange(bits, mode):
    return quant_range(bits, signed=(mode != "unsigned"))


def make_params(rng, channels, bits, mode):
    """Scales across magnitudes (mantissa in [1, 2) times 2^-24..2^8, a quarter of them exact powers
    of two) and whole zero points as float32."""
    qmin, qmax = qrange(bits, mode)
    mant = rng.uniform(1.0, 2.0, channels)
    mant[rng.random(channels) < 0.25] = 1.0
    scale = (mant * 2.0 ** rng.integers(-24, 9, channels)).astype(np.float32)
    if mode == "symmetric":
        zp = np.zeros(channels, np.float32)
    else:
        zp = rng.integers(qmin, qmax + 1, channels).astype(np.float32)
        if mode == "signed-offset":
            zp[zp == 0] = qmin  # non-zero
    return scale, zp, qmin, qmax


def bcast(v, ndim, axis):
    """Per-channel vector `v` shaped to broadcast against a tensor along `axis` (None: per tensor)."""
    if axis is None:
        return v.reshape((1,) * ndim) if ndim else v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def exact_ties(t, s):
    """float32 x with fl32(x * fl32(1/s)) == t exactly where one of x0 = fl32(t*s) and its four
    nearest neighbours does it; elsewhere x0 (a near tie). Returns (x, hit mask)."""
    inv = np.float32(1.0) / s
    x0 = (t * s).astype(np.float32)
    best, hit = x0.copy(), (x0 * inv).astype(np.float32) == t
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        cand = x0
        for _ in range(2):
            cand = np.nextafter(cand, direction)
            ok = ~hit & ((cand * inv).astype(np.float32) == t)
            best[ok], hit = cand[ok], hit | ok
    return best, hit


def make_x(rng, shape, axis, scale, zp, qmin, qmax, far=True):
    """float32 x mixing values inside the grid, around both clipping edges, exact .5 ties,
    grid points, small values, zeros and (far=True) values far outside the range, |x/s| <= 2^41
    (torch's kernels cast round(x/s) to int64, so |x/s| >= 2^63 is undefined there)."""
    n = int(np.prod(shape, dtype=np.int64))
    ndim = len(shape)
    s = np.broadcast_to(bcast(scale, ndim, axis), shape).reshape(-1)
    z = np.broadcast_to(bcast(zp, ndim, axis), shape).reshape(-1).astype(np.float64)
    lo, hi = qmin - z, qmax - z  # x/s inside the grid
    kind = rng.integers(0, 10, n)
    t = rng.uniform(lo - 2.5, hi + 2.5)  # kind 0-2: anywhere around the grid, both edges
    ties = np.floor(rng.uniform(lo - 2, hi + 1)) + 0.5
    t = np.where((kind == 3) | (kind == 4), ties, t)
    t = np.where(kind == 5, np.round(rng.uniform(lo - 1, hi + 1)), t)  # grid points
    t = np.where(kind == 6, rng.standard_normal(n) * 1e-3, t)
    t = np.where(kind == 7, 0.0, t)
    span = (qmax - qmin + 1) * 2.0 ** rng.uniform(1, 40, n)
    t = np.where(kind == 8, np.where(rng.random(n) < 0.5, -span, span) if far else t, t)
    x = (t * s).astype(np.float32)
    tie = (kind == 3) | (kind == 4)
    if tie.any():
        xt, _ = exact_ties(t[tie].astype(np.float32), s[tie])
        x[tie] = xt
    x[(kind == 7) & (rng.random(n) < 0.5)] = -0.0
    return x.reshape(shape)


def make_case(rng, shape, axis, bits, mode, far=True):
    """Parameters for `axis` (None: per tensor) and an x to quantize with them: (scale, zp, qmin, qmax, x)."""
    scale, zp, qmin, qmax = make_params(rng, 1 if axis is None else shape[axis], bits, mode)
    return scale, zp, qmin, qmax, make_x(rng, shape, axis, scale, zp, qmin, qmax, far=far)


def torch_forward(x, scale, zp, axis, qmin, qmax):
    xt = torch.from_numpy(x)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(xt, float(scale[0]), int(zp[0]), qmin, qmax).numpy()
    return torch.fake_quantize_per_channel_affine(
        xt, torch.from_numpy(scale), torch.from_numpy(zp).to(torch.int32), axis % x.ndim, qmin, qmax
    ).numpy()


def torch_ste(x, gy, scale, zp, axis, qmin, qmax):
    xt = torch.from_numpy(x.copy()).requires_grad_()
    if axis is None:
        y = torch.fake_quantize_per_tensor_affine(xt, float(scale[0]), int(zp[0]), qmin, qmax)
    else:
        y = torch.fake_quantize_per_channel_affine(
            xt, torch.from_numpy(scale), torch.from_numpy(zp).to(torch.int32), axis % x.ndim, qmin, qmax
        )
    y.backward(torch.from_numpy(gy))
    return xt.grad.numpy()


def torch_lsq(x, gy, scale, zp, axis, qmin, qmax, grad_factor):
    """torch's learnable fake-quant ops: (gx, gscale, gzero)."""
    xt = torch.from_numpy(x.copy()).requires_grad_()
    st_ = torch.from_numpy(scale.copy()).requires_grad_()
    zt = torch.from_numpy(zp.copy()).requires_grad_()
    if axis is None:
        y = torch._fake_quantize_learnable_per_tensor_affine(xt, st_, zt, qmin, qmax, grad_factor)
    else:
        y = torch._fake_quantize_learnable_per_channel_affine(xt, st_, zt, axis % x.ndim, qmin, qmax, grad_factor)
    y.backward(torch.from_numpy(gy))
    return xt.grad.numpy(), st_.grad.numpy(), zt.grad.numpy()


def bits_of(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    bad = bits_of(a) != bits_of(b)
    assert not bad.any(), f"{bad.sum()} of {a.size} differ, first: {a[bad][:5]} vs {b[bad][:5]}"


def reduce_axes(ndim, axis):
    return tuple(range(ndim)) if axis is None else tuple(i for i in range(ndim) if i != axis % ndim)


def lsq_reference(x, gy, scale, zp, axis, qmin, qmax, grad_factor):
    """The LSQ gradients in float64 from the float32 x·(1/s) the kernels and torch both use.

    Per element: d = round(x/s) - x/s inside the grid, qmin - z below, qmax - z above; the scale
    gradient sums gy·d, the zero-point gradient sums -s·gy outside. Also returns the sums of
    |terms| and the per-element quantities the bounds need."""
    nd = x.ndim
    s, z = bcast(scale, nd, axis), bcast(zp, nd, axis)
    inv = np.float32(1.0) / s
    xs = (x * inv).astype(np.float32)
    r = np.rint(xs)  # half to even, float32
    q = r + z
    inside = (q >= qmin) & (q <= qmax)
    xs64, r64, z64 = xs.astype(np.float64), r.astype(np.float64), z.astype(np.float64)
    d = np.where(inside, r64 - xs64, np.where(q < qmin, qmin - z64, qmax - z64))
    g64 = gy.astype(np.float64)
    axes = reduce_axes(nd, axis)
    gf = float(np.float32(grad_factor))
    out = {
        "inside": inside,
        "gscale": gf * np.sum(g64 * d, axis=axes).reshape(-1),
        # the kernels' own terms: gy·d rounded once to float32 (d is exact in float32), summed exactly
        "gscale_float32_terms": gf * np.sum((gy * d.astype(np.float32)).astype(np.float64), axis=axes).reshape(-1),
        "abs_scale": np.sum(np.abs(g64 * d), axis=axes).reshape(-1),
        # |gy|·(|round(x/s)| + |x/s| + |d|): the size of the terms torch's per-element formula rounds
        "abs_torch_elem": np.sum(np.abs(g64) * (np.abs(np.where(inside, r64, 0)) + np.abs(xs64) * inside
                                                 + np.abs(d)), axis=axes).reshape(-1),
        "gzero": -gf * scale.astype(np.float64) * np.sum(np.where(inside, 0.0, g64), axis=axes).reshape(-1),
        "abs_zero": np.abs(gf) * scale.astype(np.float64)
        * np.sum(np.where(inside, 0.0, np.abs(g64)), axis=axes).reshape(-1),
    }
    return out


def lsq_bounds(x, axis, ref, grad_factor):
    """Bounds on |ours - reference| and |torch - reference| for the scale and zero-point gradients.

    Ours: d is exact in float32 (r and x/s lie within a factor 2 of each other, or r = 0 — Sterbenz),
    gy·d is rounded once to float32, the terms are summed in float64 (≤ n·2⁻⁵³ of their absolute
    sum), multiplied by grad_factor (float64) and cast to float32 once:
        |ours - ref| <= 1.01·u·|gf|·Σ|gy·d| + u·|ref|  (+ the float64 sum's error).
    The layout the kernel sees (long rows, channels-last columns, or the channels moved to the front)
    changes only the float64 summation order, so the bound holds for any of them.
    torch: per element it computes gy·(fl(r·s) - x)·fl(1/s)·gf (inside) with ~6 roundings; against
    the reference's r - fl(x·fl(1/s)) this is off by <= u·|gy|·(|r| + 5|d| + 2|x/s|) <= 6u·(that sum),
    then N_c terms are summed in float32 in some order: <= 1.01·N_c·u·Σ|terms| (any order).
    """
    n_c = x.size if axis is None else x.size // max(x.shape[axis % x.ndim], 1)
    f64 = 1.01 * (n_c + 2) * 2.0**-53  # the float64 sums and products
    gf = abs(float(np.float32(grad_factor)))
    ours_s = (1.01 * U32 + f64) * gf * ref["abs_scale"] + U32 * np.abs(ref["gscale"]) + 1e-37
    ours_z = f64 * ref["abs_zero"] + 1.01 * U32 * np.abs(ref["gzero"]) + 1e-37
    torch_s = 6 * U32 * gf * ref["abs_torch_elem"] + 1.01 * (n_c + 2) * U32 * gf * ref["abs_scale"] + 1e-37
    torch_z = 1.01 * (n_c + 4) * U32 * ref["abs_zero"] + 1e-37
    return ours_s, ours_z, torch_s, torch_z


def away_from_ties(x, scale, zp, axis, margin=0.02):
    """Move x/s off .5 ties (by snapping those x to the grid point) so that rounding x/s + z, as
    torch's learnable ops do, and rounding x/s, then adding z, as the kernels do, cannot disagree."""
    nd = x.ndim
    s = bcast(scale, nd, axis)
    inv = np.float32(1.0) / s
    xs = (x * inv).astype(np.float32).astype(np.float64)
    frac = xs - np.floor(xs)
    near = (np.abs(frac - 0.5) < margin) & (np.abs(xs) < 2**22)
    snapped = (np.round(xs) * np.broadcast_to(s, x.shape)).astype(np.float32)
    return np.where(near, snapped, x).astype(np.float32)


# --------------------------------------------------------------------------- forward


shape_strategy = st.lists(st.one_of(st.integers(1, 7), st.sampled_from([15, 16, 17, 33])), min_size=0, max_size=4)


@st.composite
def case(draw, allow_scalar=True):
    shape = tuple(draw(shape_strategy))
    nd = len(shape)
    axis = None if nd == 0 else draw(st.one_of(st.none(), st.integers(-nd, nd - 1)))
    return shape, axis, draw(st.sampled_from(BITS)), draw(st.sampled_from(MODES)), draw(st.integers(0, 2**32 - 1))


@HYP
@given(c=case())
def test_forward_bit_exact_with_torch_every_isa(c):
    shape, axis, bits, mode, seed = c
    rng = np.random.default_rng(seed)
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, bits, mode)
    want = torch_forward(x, scale, zp, axis, qmin, qmax)
    for isa in ISAS:
        got = core.fake_quant_forward(x, scale, zp, axis, qmin, qmax, isa=isa)
        assert got.shape == x.shape and got.dtype == np.float32
        assert_bitwise_equal(got, want)


@pytest.mark.parametrize("shape,axis", [((3, 8193), 0), ((2, 8192 * 2 + 17), -2), ((50_001,), None),
                                        ((5, 3, 4099), 1), ((40_000, 3), -1), ((4, 64, 9, 9), 1),
                                        # channels last: rows of whole periods, a short last row,
                                        # periods wider than a row chunk, runs up to 63 elements
                                        ((3, 5000), -1), ((2, 300, 9), 1), ((100, 64, 1, 1), 1),
                                        ((50, 4, 63), 1), ((7, 5, 3), 1)])
@pytest.mark.parametrize("bits,mode", [(8, "symmetric"), (4, "unsigned"), (16, "signed-offset"), (2, "symmetric")])
def test_forward_bit_exact_large_rows_and_blocks(shape, axis, bits, mode):
    """Rows longer than one block (8192), vector tails, many channels, every ISA, 1 and 2 threads."""
    rng = np.random.default_rng(sum(shape) * 31 + bits)
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, bits, mode)
    want = torch_forward(x, scale, zp, axis, qmin, qmax)
    for isa in ISAS:
        for threads in (1, 2):
            assert_bitwise_equal(core.fake_quant_forward(x, scale, zp, axis, qmin, qmax, isa=isa,
                                                         num_threads=threads), want)


@pytest.mark.parametrize("bits,mode", [(b, m) for b in BITS for m in MODES])
def test_exact_ties_round_half_to_even(bits, mode):
    """x with fl(x·fl(1/s)) = k + 0.5 exactly, for every k around the grid: the grid value is the
    even neighbour, as torch (nearbyint) has it."""
    rng = np.random.default_rng(bits * 7 + len(mode))
    scale, zp, qmin, qmax = make_params(rng, 1, bits, mode)
    if bits > 8:
        k = np.concatenate([np.arange(qmin - zp[0] - 3, qmin - zp[0] + 40), np.arange(qmax - zp[0] - 40, qmax - zp[0] + 3),
                            rng.integers(qmin - zp[0], qmax - zp[0], 500)])
    else:
        k = np.arange(qmin - zp[0] - 3, qmax - zp[0] + 3)
    t = (k + 0.5).astype(np.float32)
    # several scales (powers of two and not), one per-tensor call each
    for s in [scale[0], np.float32(0.1), np.float32(2.0**-7), np.float32(3.0), np.float32(1 / 3)]:
        sv = np.full(t.shape, s, np.float32)
        x, hit = exact_ties(t, sv)
        x = x[hit]
        assert x.size >= t.size // 4  # most ties are reachable
        inv = np.float32(1.0) / s
        assert np.all((x * inv).astype(np.float32) % 1 == 0.5)
        even = 2 * np.round((t[hit] - 0.5) / 2 + 0.25)  # the even one of k, k+1
        expect_q = np.clip(even + zp[0], qmin, qmax)
        expect = ((expect_q - zp[0]).astype(np.float32) * s).astype(np.float32)
        want = torch_forward(x, np.array([s]), zp, None, qmin, qmax)
        assert_bitwise_equal(want, expect)  # the reference itself rounds half to even
        for isa in ISAS:
            assert_bitwise_equal(core.fake_quant_forward(x, np.array([s]), zp, None, qmin, qmax, isa=isa), expect)


def test_forward_saturates_huge_values_and_keeps_nan():
    """Beyond torch's int64 cast (|x/s| >= 2^63, where torch.fake_quantize_per_channel_affine returns
    qmin even for +huge): the kernels saturate by sign (the mathematically right answer); NaN stays NaN."""
    x = np.array([[1e30, -1e30, np.inf, -np.inf, np.nan, 3e38]], np.float32)
    for isa in ISAS:
        y = core.fake_quant_forward(x, np.array([0.5], np.float32), np.array([3.0], np.float32), None, 0, 15, isa=isa)
        np.testing.assert_array_equal(y[0, [0, 2, 5]], 6.0)
        np.testing.assert_array_equal(y[0, [1, 3]], -1.5)
        assert np.isnan(y[0, 4])


def test_forward_out_and_in_place():
    rng = np.random.default_rng(0)
    scale, zp, qmin, qmax, x = make_case(rng, (6, 100), 0, 4, "unsigned")
    want = torch_forward(x, scale, zp, 0, qmin, qmax)
    out = np.empty_like(x)
    res = core.fake_quant_forward(x, scale, zp, 0, qmin, qmax, out=out)
    assert_bitwise_equal(out, want)
    assert np.shares_memory(res, out)
    core.fake_quant_forward(x, scale, zp, 0, qmin, qmax, out=x)  # y may alias x
    assert_bitwise_equal(x, want)


def test_empty_and_scalar_tensors():
    s, z = np.array([0.25], np.float32), np.array([0.0], np.float32)
    assert core.fake_quant_forward(np.zeros((0, 3), np.float32), s, z).shape == (0, 3)
    assert core.fake_quant_forward(np.zeros((2, 0), np.float32), s, z).shape == (2, 0)
    y = core.fake_quant_forward(np.array(0.3, np.float32), s, z)
    assert y.shape == () and y == np.float32(0.25)
    gx, gs, gz = core.fake_quant_backward(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
                                          np.full(3, 0.1, np.float32), np.zeros(3, np.float32), 1, -8, 7,
                                          scale_grad=True, zero_point_grad=True)
    assert gx.shape == (0, 3)
    np.testing.assert_array_equal(gs, 0.0)
    np.testing.assert_array_equal(gz, 0.0)


# --------------------------------------------------------------------------- backward: STE


@settings(HYP, max_examples=60)
@given(c=case())
def test_ste_equals_torch_every_isa(c):
    shape, axis, bits, mode, seed = c
    rng = np.random.default_rng(seed)
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, bits, mode)
    gy = rng.standard_normal(shape).astype(np.float32)
    want = torch_ste(x, gy, scale, zp, axis, qmin, qmax)
    for isa in ISAS:
        for flags in ((False, False), (True, True)):
            gx, gs, gz = core.fake_quant_backward(x, gy, scale, zp, axis, qmin, qmax, 1.0, *flags, isa=isa)
            # equal as values: torch's grad·mask leaves -0.0 where grad < 0 is masked, the kernels +0.0
            np.testing.assert_array_equal(gx, want)
            assert (gs is None) == (not flags[0]) and (gz is None) == (not flags[1])


# --------------------------------------------------------------------------- backward: LSQ


LSQ_CASES = [
    ((3, 5000), None, 8, "symmetric"),
    ((2, 3, 9000), None, 4, "unsigned"),
    ((16, 3, 3, 3), 0, 4, "symmetric"),
    ((16, 3, 3, 3), 0, 3, "unsigned"),
    ((64, 40), 1, 8, "signed-offset"),
    ((64, 40), -1, 2, "symmetric"),
    ((2, 4, 10000), 1, 8, "unsigned"),  # rows longer than one block
    ((3, 20001), 0, 16, "signed-offset"),
    ((5, 6, 7), -2, 6, "unsigned"),
    # channels last (runs < 64 elements): the column path, with a short last row and column chunks
    ((40000, 3), -1, 4, "unsigned"),
    ((3, 5000), -1, 8, "symmetric"),
    ((2, 300, 9), 1, 4, "signed-offset"),
]


@pytest.mark.parametrize("grad_factor", [1.0, 0.0123])
@pytest.mark.parametrize("shape,axis,bits,mode", LSQ_CASES)
def test_lsq_gradients_match_torch_learnable_ops(shape, axis, bits, mode, grad_factor):
    rng = np.random.default_rng(zlib.crc32(repr((shape, axis, bits, mode)).encode()))
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, bits, mode)
    x = away_from_ties(x, scale, zp, axis)
    gy = rng.standard_normal(shape).astype(np.float32)
    ref = lsq_reference(x, gy, scale, zp, axis, qmin, qmax, grad_factor)
    ours_s, ours_z, torch_s, torch_z = lsq_bounds(x, axis, ref, grad_factor)
    tgx, tgs, tgz = torch_lsq(x, gy, scale, zp, axis, qmin, qmax, grad_factor)
    assert np.all(np.abs(tgs - ref["gscale"]) <= torch_s), "torch itself outside its bound"
    assert np.all(np.abs(tgz - ref["gzero"]) <= torch_z), "torch itself outside its bound"
    for isa in ISAS:
        gx, gs, gz = core.fake_quant_backward(x, gy, scale, zp, axis, qmin, qmax, grad_factor, True, True, isa=isa)
        np.testing.assert_array_equal(gx, tgx)
        err_s, err_z = np.abs(gs - ref["gscale"]), np.abs(gz - ref["gzero"])
        assert np.all(err_s <= ours_s), f"gscale off by {err_s.max():.3g} > bound {ours_s.min():.3g}"
        assert np.all(err_z <= ours_z), f"gzero off by {err_z.max():.3g}"
        assert np.all(np.abs(gs - tgs) <= ours_s + torch_s)
        assert np.all(np.abs(gz - tgz) <= ours_z + torch_z)


def test_lsq_scale_gradient_is_the_true_derivative_where_clipped():
    """Where every element is clipped, y = (q_edge - z)·s is linear in s and z, so LSQ's gradient is
    the true derivative: check it against a central finite difference of the forward kernel."""
    rng = np.random.default_rng(5)
    scale = np.array([0.5, 0.25, 2.0], np.float32)
    zp = np.array([3.0, 1.0, 9.0], np.float32)  # interior, so z ± 1 stays on the grid
    qmin, qmax = 0, 15
    x = (rng.choice([-1, 1], (3, 50)) * rng.uniform(1e3, 1e5, (3, 50))).astype(np.float32)
    gy = rng.standard_normal((3, 50)).astype(np.float32)
    _, gs, gz = core.fake_quant_backward(x, gy, scale, zp, 0, qmin, qmax, 1.0, True, True)
    h = np.float32(2.0**-10)
    g64 = gy.astype(np.float64)
    for c in range(3):
        sp, sm = scale.copy(), scale.copy()
        sp[c] += h
        sm[c] -= h
        fd = (core.fake_quant_forward(x, sp, zp, 0, qmin, qmax).astype(np.float64)
              - core.fake_quant_forward(x, sm, zp, 0, qmin, qmax)) / (2 * h)
        assert gs[c] == pytest.approx(np.sum(g64[c] * fd[c]), rel=1e-6)
        zpl, zmi = zp.copy(), zp.copy()
        zpl[c] += 1
        zmi[c] -= 1
        fdz = (core.fake_quant_forward(x, scale, zpl, 0, qmin, qmax).astype(np.float64)
               - core.fake_quant_forward(x, scale, zmi, 0, qmin, qmax)) / 2
        assert gz[c] == pytest.approx(np.sum(g64[c] * fdz[c]), rel=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_lsq_sums_are_float64_sums_of_the_float32_terms(isa):
    """Every term gy·d is formed in float32 and summed in float64, so the scale and zero-point
    gradients are the float64 sums of those terms, rounded once to float32. (A float32 running sum
    over an 8192-element block was off by ~1e-6 of the terms' absolute sum: a CUDA kernel summing
    in another order could not be compared with it.)"""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((6, 30000)) * 2).astype(np.float32)
    gy = rng.standard_normal((6, 30000)).astype(np.float32)
    scale = rng.uniform(0.02, 0.12, 6).astype(np.float32)
    zp = np.full(6, 3.0, np.float32)
    qmin, qmax = 0, 15
    _, gs, gz = core.fake_quant_backward(x, gy, scale, zp, 0, qmin, qmax, 1.0, True, True, isa=isa)
    ref = lsq_reference(x, gy, scale, zp, 0, qmin, qmax, 1.0)
    want_s, want_z = ref["gscale_float32_terms"], ref["gzero"]  # the exact sums, before the final rounding
    assert np.all(np.abs(gs - want_s) <= 1.2e-7 * np.abs(want_s) + 1e-10 * ref["abs_scale"])
    assert np.all(np.abs(gz - want_z) <= 1.2e-7 * np.abs(want_z) + 1e-10 * ref["abs_zero"])


def test_backward_threads_and_isas_give_identical_bits():
    """A large per-tensor case whose blocks differ by 2^±20 in magnitude (so any change in the order
    of the float64 block sums would show): gscale, gzero and gx are the same bits for 1 and 2 threads
    (and the OpenMP default) and every ISA."""
    rng = np.random.default_rng(11)
    n = 256 * KBLOCK + 1234
    mag = np.repeat(2.0 ** rng.integers(-20, 21, n // KBLOCK + 1), KBLOCK)[:n]
    x = (rng.standard_normal(n) * mag).astype(np.float32)
    gy = rng.standard_normal(n).astype(np.float32)
    scale, zp = np.array([0.013], np.float32), np.array([-7.0], np.float32)
    results = set()
    for isa in ISAS:
        for threads in (1, 2, 0):
            gx, gs, gz = core.fake_quant_backward(x, gy, scale, zp, None, -128, 127, 0.7, True, True,
                                                  isa=isa, num_threads=threads)
            results.add((gs.tobytes(), gz.tobytes(), gx.tobytes()))
    assert len(results) == 1
    want = torch_forward(x, scale, zp, None, -128, 127)
    for isa in ISAS:
        assert_bitwise_equal(core.fake_quant_forward(x, scale, zp, None, -128, 127, isa=isa, num_threads=2), want)


# --------------------------------------------------------------------------- the torch op layer


def test_fake_quantize_forward_equals_torch_per_channel_and_per_tensor():
    rng = np.random.default_rng(3)
    for bits in BITS:
        for signed in (True, False):
            qmin, qmax = quant_range(bits, signed)
            x = torch.from_numpy(rng.standard_normal((6, 5, 7)).astype(np.float32)) * 3
            s = torch.from_numpy(rng.uniform(0.01, 0.2, 5).astype(np.float32))
            z = torch.from_numpy(rng.integers(qmin, qmax + 1, 5).astype(np.int32)) if not signed else torch.zeros(
                5, dtype=torch.int32)
            for axis in (1, -2):
                got = fake_quantize(x, s, z.float(), bits=bits, signed=signed, axis=axis)
                want = torch.fake_quantize_per_channel_affine(x, s, z, 1, qmin, qmax)
                assert_bitwise_equal(got.numpy(), want.numpy())
            got = fake_quantize(x, s[:1], z[:1].float(), bits=bits, signed=signed)
            want = torch.fake_quantize_per_tensor_affine(x, float(s[0]), int(z[0]), qmin, qmax)
            assert_bitwise_equal(got.numpy(), want.numpy())
    # zero_point=None means 0; scale may be any shape with the right number of elements
    x = torch.randn(4, 3)
    assert_bitwise_equal(fake_quantize(x, torch.full((1, 3), 0.1), axis=1).numpy(),
                         torch.fake_quantize_per_channel_affine(x, torch.full((3,), 0.1), torch.zeros(3, dtype=torch.int32),
                                                                1, -128, 127).numpy())


@pytest.mark.parametrize("x_grad,s_grad,z_grad", [(True, False, False), (False, True, False), (False, False, True),
                                                  (True, True, True), (False, True, True)])
def test_fake_quantize_grads_reach_only_what_requires_grad(monkeypatch, x_grad, s_grad, z_grad):
    calls = []
    real = core.fake_quant_backward

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops._core, "fake_quant_backward", spy)
    torch.manual_seed(0)
    x = (torch.randn(5, 4) * 2).requires_grad_(x_grad)
    s = torch.tensor([0.1, 0.2, 0.05, 0.3]).requires_grad_(s_grad)
    z = torch.tensor([3.0, 7.0, 0.0, 15.0]).requires_grad_(z_grad)
    w = torch.randn(5, 4, requires_grad=True)  # something that always needs grad
    y = fake_quantize(x, s, z, bits=4, signed=False, axis=1) * w
    y.sum().backward()
    assert (x.grad is not None) == x_grad
    assert (s.grad is not None) == s_grad
    assert (z.grad is not None) == z_grad
    # one backward call, asking the kernel only for what is needed
    (args,) = calls
    assert args[8] == s_grad and args[9] == z_grad
    gy = w.detach().numpy()
    xn, sn, zn = x.detach().numpy(), s.detach().numpy(), z.detach().numpy()
    gx, _, _ = real(xn, gy, sn, zn, 1, 0, 15, 1.0, True, True)
    if x_grad:
        np.testing.assert_array_equal(x.grad.numpy(), gx)
    # the op may hand the kernel another layout (channels moved to the front), so the float32
    # partial sums may run in another order: compare with the float64 formula within the bound
    ref = lsq_reference(xn, gy, sn, zn, 1, 0, 15, 1.0)
    bound_s, bound_z, _, _ = lsq_bounds(xn, 1, ref, 1.0)
    if s_grad:
        assert np.all(np.abs(s.grad.numpy() - ref["gscale"]) <= bound_s)
    if z_grad:
        assert np.all(np.abs(z.grad.numpy() - ref["gzero"]) <= bound_z)


def test_fake_quantize_learnable_zero_point_is_rounded_with_straight_through_grad():
    torch.manual_seed(1)
    x = torch.randn(8, 3) * 0.5
    s = torch.tensor([0.05, 0.1, 0.02], requires_grad=True)
    z = torch.tensor([3.3, 17.8, -2.0], requires_grad=True)  # round to 3, 18 -> clamp 15, -2 -> clamp 0
    y = fake_quantize(x, s, z, bits=4, signed=False, axis=1)
    zr = torch.tensor([3, 15, 0], dtype=torch.int32)
    assert_bitwise_equal(y.detach().numpy(),
                         torch.fake_quantize_per_channel_affine(x, s.detach(), zr, 1, 0, 15).numpy())
    gy = torch.randn(8, 3)
    y.backward(gy)
    ref = lsq_reference(x.numpy(), gy.numpy(), s.detach().numpy(), zr.float().numpy(), 1, 0, 15, 1.0)
    bound_s, bound_z, _, _ = lsq_bounds(x.numpy(), 1, ref, 1.0)
    assert np.all(np.abs(z.grad.numpy() - ref["gzero"]) <= bound_z)  # of the rounded, clamped z
    assert np.all(np.abs(s.grad.numpy() - ref["gscale"]) <= bound_s)
    assert np.any(ref["gzero"] != 0)  # the case has clipped elements


@pytest.mark.parametrize("shape,axis", [((12, 7, 3, 3), 0), ((12, 7, 3, 3), None), ((300, 12), -1),
                                        ((4, 12, 5), 1)])
@pytest.mark.parametrize("grad_factor", [1.0, 0.25])
def test_fake_quantize_lsq_against_torch_learnable(shape, axis, grad_factor):
    rng = np.random.default_rng(zlib.crc32(repr((shape, axis, grad_factor)).encode()))
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, 4, "unsigned")
    x = away_from_ties(x, scale, zp, axis)
    gy = rng.standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    st_ = torch.from_numpy(scale.copy()).requires_grad_()
    zt = torch.from_numpy(zp.copy()).requires_grad_()
    fake_quantize(xt, st_, zt, bits=4, signed=False, axis=axis, grad_factor=grad_factor).backward(torch.from_numpy(gy))
    tgx, tgs, tgz = torch_lsq(x, gy, scale, zp, axis, qmin, qmax, grad_factor)
    ref = lsq_reference(x, gy, scale, zp, axis, qmin, qmax, grad_factor)
    ours_s, ours_z, torch_s, torch_z = lsq_bounds(x, axis, ref, grad_factor)
    np.testing.assert_array_equal(xt.grad.numpy(), tgx)
    assert np.all(np.abs(st_.grad.numpy() - ref["gscale"]) <= ours_s)
    assert np.all(np.abs(zt.grad.numpy() - ref["gzero"]) <= ours_z)
    assert np.all(np.abs(st_.grad.numpy() - tgs) <= ours_s + torch_s)
    assert np.all(np.abs(zt.grad.numpy() - tgz) <= ours_z + torch_z)


def test_non_contiguous_inputs_are_made_contiguous():
    torch.manual_seed(2)
    base = torch.randn(9, 6) * 2
    x = base.t().requires_grad_()  # (6, 9), strides (1, 6)
    assert not x.is_contiguous()
    s = torch.linspace(0.05, 0.3, 6)
    y = fake_quantize(x, s, axis=0, bits=3)
    want = torch.fake_quantize_per_channel_affine(x.detach(), s, torch.zeros(6, dtype=torch.int32), 0, -4, 3)
    assert_bitwise_equal(y.detach().numpy(), want.numpy())
    gy = torch.randn(6, 9)
    y.backward(gy)
    xr = x.detach().contiguous().requires_grad_()
    torch.fake_quantize_per_channel_affine(xr, s, torch.zeros(6, dtype=torch.int32), 0, -4, 3).backward(gy)
    np.testing.assert_array_equal(x.grad.numpy(), xr.grad.numpy())
    # channels_last activations, per channel along C
    a = (torch.randn(2, 5, 4, 3) * 4).to(memory_format=torch.channels_last)
    sa = torch.linspace(0.1, 0.5, 5)
    assert_bitwise_equal(fake_quantize(a, sa, axis=1, bits=8).numpy(),
                         torch.fake_quantize_per_channel_affine(a, sa, torch.zeros(5, dtype=torch.int32), 1,
                                                                -128, 127).contiguous().numpy())
    # a strided scale
    s2 = torch.linspace(0.05, 0.3, 12)[::2]
    assert_bitwise_equal(fake_quantize(x.detach(), s2, axis=0, bits=3).numpy(),
                         torch.fake_quantize_per_channel_affine(x.detach(), s2.contiguous(),
                                                                torch.zeros(6, dtype=torch.int32), 0, -4, 3).numpy())


def _compiled_case():
    torch.manual_seed(4)
    x = (torch.randn(8, 6, 5) * 3).requires_grad_()
    s = (torch.rand(6) * 0.2 + 0.05).requires_grad_()
    z = torch.tensor([0.0, 3.0, 7.0, 15.0, 1.0, 9.0]).requires_grad_()
    return x, s, z


def test_torch_compile_fullgraph_matches_eager():
    def f(x, s, z):
        # x * 2 is exact, so eager and compiled graphs feed the op identical bits
        return fake_quantize(x * 2, s, z, bits=4, signed=False, axis=1, grad_factor=0.5)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    gy = torch.randn(8, 6, 5)
    results = []
    for fn in (f, compiled):
        x, s, z = _compiled_case()
        y = fn(x, s, z)
        y.backward(gy)
        results.append((y.detach(), x.grad, s.grad, z.grad))
    for eager, comp in zip(*results):
        assert_bitwise_equal(comp.numpy(), eager.numpy())


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated", "ignore::torch.jit.TracerWarning")
def test_eager_path_and_custom_ops_agree_and_tracing_records_the_op(monkeypatch):
    """Eager fake_quantize runs the kernels through a plain autograd.Function (no custom-op dispatch);
    it must give the custom op's bits, outputs and gradients. torch.jit.trace must record the custom
    op (a graph that can be saved), not a Python callback."""
    calls = []
    monkeypatch.setattr(ops._EagerFakeQuant, "apply", lambda *a: calls.append(1) or ops._fake_quant(*a))
    x, s, z = _compiled_case()
    fake_quantize(x, s, z, bits=4, signed=False, axis=1)
    assert calls, "eager fake_quantize did not take the autograd.Function"
    monkeypatch.undo()
    gy = torch.randn(8, 6, 5)
    results = []
    for op in (ops._EagerFakeQuant.apply, ops._fake_quant):
        x, s, z = _compiled_case()
        zr = z + (z.detach().round().clamp(0, 15) - z.detach())
        y = op(x, s, zr, 1, 0, 15, 0.5)
        y.backward(gy)
        results.append((y.detach(), x.grad, s.grad, z.grad))
    for a, b in zip(*results):
        assert_bitwise_equal(a.numpy(), b.numpy())
    s = torch.rand(6) * 0.2 + 0.05
    traced = torch.jit.trace(lambda t: fake_quantize(t, s, bits=4, axis=1), torch.randn(8, 6, 5))
    assert "ompq_ext::fake_quant" in str(traced.graph)
    other = torch.randn(8, 6, 5) * 3
    assert_bitwise_equal(traced(other).numpy(), fake_quantize(other, s, bits=4, axis=1).numpy())


OPCHECK_SAMPLES = [
    lambda: ((torch.randn(4, 6) * 3).requires_grad_(), (torch.rand(6) * 0.1 + 0.01).requires_grad_(),
             torch.tensor([0.0, 1, 2, 3, 4, 5]).requires_grad_(), 1, 0, 15, 0.5),
    lambda: (torch.randn(3, 2, 5).requires_grad_(), torch.tensor([0.05]).requires_grad_(), torch.tensor([0.0]),
             -1, -128, 127, 1.0),
    lambda: (torch.randn(2, 3, 4, 4), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([-1.0, 0.0, 1.0]), 1, -8, 7, 1.0),
]


@pytest.mark.parametrize("sample", range(len(OPCHECK_SAMPLES)))
def test_opcheck(sample):
    torch.manual_seed(sample)
    torch.library.opcheck(torch.ops.ompq_ext.fake_quant.default, OPCHECK_SAMPLES[sample]())


def test_opcheck_non_contiguous_input():
    """The op called directly with a non-contiguous x: the fake kernel's output must have the real
    kernel's (contiguous) strides. (Found failing with torch.empty_like(x) in the fake kernel; fixed
    in b9cd4d9.)"""
    x = torch.randn(6, 4).t()
    torch.library.opcheck(torch.ops.ompq_ext.fake_quant.default,
                          (x, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), torch.zeros(6), 1, -128, 127, 1.0),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("shape,axis", [((70_000, 1), -1), ((3, 1, 5), 1), ((1, 70_000), 1)])
def test_one_channel_or_one_element_per_channel_layouts(shape, axis):
    """A single channel on a non-leading axis is one run of the whole tensor; a channel per element
    (outer = 1, inner = 1) takes the column view with no expanded copies. Both equal torch, and the
    LSQ sums equal the float64 sums of the float32 terms."""
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    scale, zp, qmin, qmax, x = make_case(rng, shape, axis, 4, "unsigned")
    x = away_from_ties(x, scale, zp, axis)
    gy = rng.standard_normal(shape).astype(np.float32)
    ref = lsq_reference(x, gy, scale, zp, axis, qmin, qmax, 1.0)
    ours_s, ours_z, _, _ = lsq_bounds(x, axis, ref, 1.0)
    for isa in ISAS:
        assert_bitwise_equal(core.fake_quant_forward(x, scale, zp, axis, qmin, qmax, isa=isa),
                             torch_forward(x, scale, zp, axis, qmin, qmax))
        gx, gs, gz = core.fake_quant_backward(x, gy, scale, zp, axis, qmin, qmax, 1.0, True, True, isa=isa)
        np.testing.assert_array_equal(gx, torch_ste(x, gy, scale, zp, axis, qmin, qmax))
        assert np.all(np.abs(gs - ref["gscale"]) <= ours_s) and np.all(np.abs(gz - ref["gzero"]) <= ours_z)


def test_channels_last_threads_isas_and_in_place_give_identical_bits():
    """Per-channel along the last axis goes through the column path (tiles of rows x columns with
    per-column partial sums added in tile order): gx, gscale and gzero are the same bits for any
    thread count and ISA, the forward equals torch's bit for bit, also in place (y aliasing x)."""
    rng = np.random.default_rng(17)
    shape = (300_007, 4)  # 1.2 M elements: the parallel path; a short last row
    scale, zp, qmin, qmax, x = make_case(rng, shape, -1, 4, "unsigned")
    gy = rng.standard_normal(shape).astype(np.float32)
    results = set()
    for isa in ISAS:
        for threads in (1, 2, 0):
            gx, gs, gz = core.fake_quant_backward(x, gy, scale, zp, -1, qmin, qmax, 0.7, True, True,
                                                  isa=isa, num_threads=threads)
            results.add((gs.tobytes(), gz.tobytes(), gx.tobytes()))
    assert len(results) == 1
    want = torch_forward(x, scale, zp, -1, qmin, qmax)
    for isa in ISAS:
        y = x.copy()
        core.fake_quant_forward(y, scale, zp, -1, qmin, qmax, out=y, isa=isa, num_threads=2)
        assert_bitwise_equal(y, want)


# --------------------------------------------------------------------------- errors


S1, Z1 = np.array([0.1], np.float32), np.array([0.0], np.float32)
X = np.ones((2, 3), np.float32)


def _binding(**kw):
    args = {"x": X, "scale": S1, "zero_point": Z1, "axis": None, "qmin": -128, "qmax": 127}
    args.update(kw)
    return lambda: core.fake_quant_forward(**args)


def _binding_bwd(**kw):
    args = {"x": X, "grad": X, "scale": S1, "zero_point": Z1, "axis": None, "qmin": -128, "qmax": 127,
            "scale_grad": True}
    args.update(kw)
    return lambda: core.fake_quant_backward(**args)


def _fq(x=None, scale=None, **kw):
    x = torch.ones(2, 3) if x is None else x
    scale = torch.tensor([0.1]) if scale is None else scale
    return lambda: fake_quantize(x, scale, **kw)


BAD = {
    # the binding
    "scale 0": (_binding(scale=np.array([0.0], np.float32)), OmpqValueError),
    "scale < 0": (_binding(scale=np.array([-0.1], np.float32)), OmpqValueError),
    "scale nan": (_binding(scale=np.array([np.nan], np.float32)), OmpqValueError),
    "scale inf": (_binding(scale=np.array([np.inf], np.float32)), OmpqValueError),
    "scale subnormal (1/s = inf)": (_binding(scale=np.array([1e-45], np.float32)), OmpqValueError),
    "one bad channel": (_binding(axis=1, scale=np.array([0.1, 0.0, 0.1], np.float32), zero_point=np.zeros(3, np.float32)),
                        OmpqValueError),
    "wrong number of scales": (_binding(axis=1, scale=np.full(2, 0.1, np.float32), zero_point=np.zeros(2, np.float32)),
                               OmpqValueError),
    "per-tensor with 3 scales": (_binding(scale=np.full(3, 0.1, np.float32), zero_point=np.zeros(3, np.float32)),
                                 OmpqValueError),
    "scale/zero length differ": (_binding(zero_point=np.zeros(2, np.float32)), OmpqValueError),
    "empty scale": (_binding(scale=np.zeros(0, np.float32), zero_point=np.zeros(0, np.float32)), OmpqValueError),
    "axis 2 of 2-D": (_binding(axis=2, scale=np.full(3, 0.1, np.float32), zero_point=np.zeros(3, np.float32)),
                      OmpqValueError),
    "axis -3 of 2-D": (_binding(axis=-3, scale=np.full(2, 0.1, np.float32), zero_point=np.zeros(2, np.float32)),
                       OmpqValueError),
    "zero point 0.5": (_binding(zero_point=np.array([0.5], np.float32)), OmpqValueError),
    "zero point nan": (_binding(zero_point=np.array([np.nan], np.float32)), OmpqValueError),
    "zero point above qmax": (_binding(zero_point=np.array([128.0], np.float32)), OmpqValueError),
    "zero point below qmin": (_binding(qmin=0, qmax=15, zero_point=np.array([-1.0], np.float32)), OmpqValueError),
    "qmin > qmax": (_binding(qmin=5, qmax=4), OmpqValueError),
    "range beyond 16 bits": (_binding(qmin=0, qmax=1 << 20), OmpqValueError),
    "float64 x": (_binding(x=np.ones((2, 3))), OmpqValueError),
    "float16 x": (_binding(x=np.ones((2, 3), np.float16)), OmpqValueError),
    "non-contiguous x": (_binding(x=np.ones((3, 2), np.float32).T), OmpqValueError),
    "x not an array": (_binding(x=[1.0, 2.0]), OmpqValueError),
    "byte-swapped x": (_binding(x=np.ones((2, 3), ">f4")), OmpqValueError),
    "bad isa": (lambda: core.fake_quant_forward(X, S1, Z1, isa="sse9"), OmpqValueError),
    "negative threads": (lambda: core.fake_quant_forward(X, S1, Z1, num_threads=-1), OmpqValueError),
    "out too small": (_binding(out=np.empty(5, np.float32)), OmpqValueError),
    "out read-only": (lambda: core.fake_quant_forward(X, S1, Z1, out=np.frombuffer(bytes(24), np.float32)),
                      OmpqValueError),
    "bwd grad shape": (_binding_bwd(grad=np.ones((3, 2), np.float32)), OmpqValueError),
    "bwd grad size": (_binding_bwd(grad=np.ones((2, 4), np.float32)), OmpqValueError),
    "bwd grad float64": (_binding_bwd(grad=np.ones((2, 3))), OmpqValueError),
    "bwd scale 0": (_binding_bwd(scale=np.array([0.0], np.float32)), OmpqValueError),
    "bwd grad_factor nan": (_binding_bwd(grad_factor=float("nan")), OmpqValueError),
    "bwd qmin > qmax": (_binding_bwd(qmin=1, qmax=0), OmpqValueError),
    # the torch op layer
    "fq scale 0": (_fq(scale=torch.tensor([0.0])), OmpqValueError),
    "fq scale < 0": (_fq(scale=torch.tensor([-1.0])), OmpqValueError),
    "fq scale nan": (_fq(scale=torch.tensor([float("nan")])), OmpqValueError),
    "fq scale inf": (_fq(scale=torch.tensor([float("inf")])), OmpqValueError),
    "fq scale needs grad, 0": (_fq(scale=torch.tensor([0.0], requires_grad=True)), OmpqValueError),
    "fq wrong number of scales": (_fq(scale=torch.tensor([0.1, 0.2]), axis=1), OmpqValueError),
    "fq per-tensor 2 scales": (_fq(scale=torch.tensor([0.1, 0.2])), OmpqValueError),
    "fq zero points count": (_fq(scale=torch.full((3,), 0.1), zero_point=torch.zeros(2), axis=1), OmpqValueError),
    "fq bits 0": (_fq(bits=0), OmpqValueError),
    "fq bits 17": (_fq(bits=17), OmpqValueError),
    "fq bits 2.0": (_fq(bits=2.0), OmpqValueError),
    "fq bits True": (_fq(bits=True), OmpqValueError),
    "fq signed 1-bit": (_fq(bits=1, signed=True), OmpqValueError),
    "fq axis 2": (_fq(scale=torch.full((3,), 0.1), axis=2), OmpqValueError),
    "fq axis -3": (_fq(scale=torch.full((2,), 0.1), axis=-3), OmpqValueError),
    "fq float64 x": (_fq(x=torch.ones(2, 3, dtype=torch.float64)), OmpqTypeError),
    "fq float16 x": (_fq(x=torch.ones(2, 3, dtype=torch.float16)), OmpqTypeError),
    "fq bfloat16 x": (_fq(x=torch.ones(2, 3, dtype=torch.bfloat16)), OmpqTypeError),
    "fq int x": (_fq(x=torch.ones(2, 3, dtype=torch.int32)), OmpqTypeError),
    "fq numpy x": (_fq(x=np.ones((2, 3), np.float32)), OmpqTypeError),
    "fq float scale": (lambda: fake_quantize(torch.ones(2), 0.1), OmpqTypeError),
    "fq meta x": (_fq(x=torch.ones(2, 3, device="meta")), OmpqError),
    "fq meta scale": (_fq(scale=torch.ones(1, device="meta")), OmpqError),
    "fq meta zero point": (_fq(zero_point=torch.zeros(1, device="meta")), OmpqError),
    "fq zero point nan": (_fq(zero_point=torch.tensor([float("nan")])), OmpqValueError),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_raise_ompq_errors(name):
    fn, exc = BAD[name]
    with pytest.raises(exc) as info:
        fn()
    assert isinstance(info.value, OmpqError)
    assert str(info.value)  # says something


def test_valid_edge_arguments_are_accepted():
    x = torch.randn(3, 4)
    assert fake_quantize(x, torch.tensor([0.1]), bits=1, signed=False).unique().numel() <= 2
    assert fake_quantize(x, torch.tensor([0.1]), bits=16).shape == x.shape
    assert fake_quantize(x, torch.tensor([0.1], dtype=torch.float64)).dtype == torch.float32  # scale converted
    y = core.fake_quant_forward(X, S1, np.array([3.0], np.float32), None, 3, 3)  # a one-point grid
    np.testing.assert_array_equal(y, 0.0)
    assert math.isfinite(float(core.fake_quant_forward(X, np.array([3e38], np.float32), Z1)[0, 0]))
