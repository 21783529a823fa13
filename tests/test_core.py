"""Tests of the C++ core (`ompq_ext._core`): Gram accumulation, centring, the ORM matrix.

Every numerical test compares with an independent numpy float64 reference, never with
the core itself. Tolerances are derived from the summation scheme (see `gram_bound`),
and where the arithmetic is exact (small dyadic inputs) the comparison is exact.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ompq_ext import _core as core
from ompq_ext.errors import OmpqError, OmpqValueError

ISAS = core.available_isas()
DTYPES = ["float32", "float16", "bfloat16", "float64"]

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64
MAX_CHUNK = 4096  # the core sums at most this many columns in float32 before going to float64
MIN_CHUNK = 256  # ... and at least this many (except a last, shorter chunk)

HYP = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def make_input(values, dtype, pad_left=0, pad_right=0):
    """Features `values` (n × d) in `dtype`, optionally as a column slice of a wider array
    (row stride > d). Returns (array for the core, kwargs, the rounded values in float64)."""
    values = np.asarray(values, dtype=np.float64)
    n, d = values.shape
    wide = np.zeros((n, pad_left + d + pad_right), dtype=np.float64)
    wide[:, pad_left : pad_left + d] = values
    cols = slice(pad_left, pad_left + d)
    if dtype == "bfloat16":
        t = torch.from_numpy(wide.astype(np.float32)).to(torch.bfloat16)  # round to nearest even
        arr = t.view(torch.int16).numpy()[:, cols]
        return arr, {"dtype": "bf16"}, t.to(torch.float64).numpy()[:, cols]
    arr = wide.astype(dtype)[:, cols]
    return arr, {}, arr.astype(np.float64)


def core_gram(arr, kwargs, isa="best", num_threads=0, gram=None):
    n = arr.shape[0]
    gram = np.zeros((n, n)) if gram is None else gram
    core.gram_accumulate(arr, gram, isa=isa, num_threads=num_threads, **kwargs)
    return gram


def gram_bound(v, dtype):
    """Entrywise bound on |core Gram − v @ v.T| for rounded inputs v (float64 values).

    Reasoning (first-order error analysis of a sum of products, Higham ch. 3): if every
    product x_ik·x_jk passes through at most D roundings of unit roundoff u on its way into
    the float32 sum, then |fl(Σ) − Σ| <= 1.01·D·u·Σ_k |x_ik x_jk| (1.01 covers γ_D vs D·u).
    The core sums in float32 (float64 for float64 input) over chunks of m <= 4096 columns,
    with at least 8 lanes; the deepest path of any kernel is the portable one: 1 rounding
    for the product, ceil(m/8) lane additions, <= 7 tail additions into lane 0 and 8
    sequential additions of the lanes, so D <= ceil(m/8) + 16 (AVX2: m/8 FMAs + 3 + 7;
    AVX-512: m/16 FMAs + 1 masked + 4; the bf16 dot instruction: <= 2 roundings per 32
    columns per lane). Chunk sums are exact in float64 and added in float64: at most
    ceil(d/256) + 1 more roundings of u64. The reference v @ v.T (float64 BLAS) has its own
    error <= d·u64 per unit of Σ|x_ik x_jk| (products of float32/16 values are exact in
    float64). Σ_k |x_ik x_jk| <= |x_i|·|x_j| (Cauchy–Schwarz) is the norm form of the bound;
    we use the tighter left side.
    """
    n, d = v.shape
    a = np.abs(v)
    scale = a @ a.T
    m = min(d, MAX_CHUNK)
    depth = -(-m // 8) + 16
    u = U64 if dtype == "float64" else U32
    chunks = -(-d // MIN_CHUNK)
    return (1.01 * depth * u + (chunks + d + 4) * U64) * scale + 1e-300


def random_values(rng, n, d, dist):
    if dist == "normal":
        return rng.standard_normal((n, d))
    if dist == "relu":  # post-ReLU activations: non-negative, positive mean, no cancellation
        return np.maximum(rng.standard_normal((n, d)), 0.0)
    if dist == "mixed-scale":  # rows and columns of very different magnitude
        return rng.standard_normal((n, d)) * np.exp(rng.uniform(-4, 4, size=(n, 1))) * np.exp(
            rng.uniform(-3, 3, size=(1, d))
        )
    raise ValueError(dist)


D_EDGES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257, 1855, 1857, 1872,
           2047, 4095, 4096, 4097, 8191, 8192, 8193, 12289, 19999]
d_strategy = st.one_of(st.sampled_from(D_EDGES), st.integers(1, 20000))
n_strategy = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 64, 67, 70]), st.integers(1, 70))


# --------------------------------------------------------------------------- Gram accuracy


def test_module_surface():
    assert ISAS[0] == "generic"
    assert core.best_isa() in ISAS and core.best_isa() == ISAS[-1]
    assert isinstance(core.openmp, bool)
    assert issubclass(OmpqValueError, OmpqError)


@HYP
@given(n=n_strategy, d=d_strategy, dtype=st.sampled_from(DTYPES), isa=st.sampled_from(ISAS),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 9)),
       dist=st.sampled_from(["normal", "relu", "mixed-scale"]), seed=st.integers(0, 2**32 - 1))
def test_gram_matches_float64_reference(n, d, dtype, isa, pad, dist, seed):
    rng = np.random.default_rng(seed)
    arr, kw, v = make_input(random_values(rng, n, d, dist), dtype, *pad)
    k = core_gram(arr, kw, isa=isa)
    ref = v @ v.T
    err = np.abs(k - ref)
    bound = gram_bound(v, dtype)
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.3g}"
    assert np.array_equal(k, k.T)  # both triangles written from the same sum


@HYP
@given(n=n_strategy, d=d_strategy, dtype=st.sampled_from(DTYPES), isa=st.sampled_from(ISAS),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 9)), seed=st.integers(0, 2**32 - 1))
def test_gram_exact_on_dyadic_inputs(n, d, dtype, isa, pad, seed):
    # Values k/4 with |k| <= 8 are exact in every dtype (bf16 included); products are multiples
    # of 1/16 bounded by 4, so every partial sum (|s| <= 4·20000, 1/16 granularity, < 2^24 ulps)
    # is exact in float32 in any order: the core must equal the reference bit for bit. This
    # catches any lost, doubled or misplaced element (tails, masks, tile padding, strides).
    rng = np.random.default_rng(seed)
    arr, kw, v = make_input(rng.integers(-8, 9, size=(n, d)) / 4.0, dtype, *pad)
    k = core_gram(arr, kw, isa=isa)
    assert np.array_equal(k, v @ v.T)


def test_gram_exact_long_rows_every_isa():
    # Longer than the hypothesis range (many chunks, odd tail), still exact: |s| <= 70001 < 2^24.
    rng = np.random.default_rng(5)
    v = rng.integers(-1, 2, size=(13, 70001)).astype(np.float64)
    for dtype in DTYPES:
        arr, kw, vr = make_input(v, dtype, 1, 2)
        for isa in ISAS:
            assert np.array_equal(core_gram(arr, kw, isa=isa), vr @ vr.T), (dtype, isa)


def test_best_isa_is_default_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 5000)).astype(np.float32)
    assert np.array_equal(core_gram(x, {}), core_gram(x, {}, isa=core.best_isa()))


def test_uint16_bf16_view_accepted():
    rng = np.random.default_rng(1)
    t = torch.from_numpy(rng.standard_normal((6, 99)).astype(np.float32)).to(torch.bfloat16)
    v = t.double().numpy()
    a = core_gram(t.view(torch.int16).numpy().view(np.uint16), {"dtype": "bf16"})
    assert np.all(np.abs(a - v @ v.T) <= gram_bound(v, "bfloat16"))


def test_bf16_subnormal_inputs():
    # bf16 subnormals (|x| < 2^-126) times large values give normal float32 products. The
    # portable and AVX2 kernels widen bf16 exactly and get them right. AVX-512 with AVX512-BF16
    # uses vdpbf16ps, which treats subnormal inputs as zero (DAZ, fixed by the instruction):
    # documented in docs/KERNELS.md; real features are never that small.
    t = torch.cat([torch.full((1, 64), 1e-39), torch.full((1, 64), 1e30)]).to(torch.bfloat16)
    v = t.double().numpy()
    assert 0 < abs(v[0, 0]) < 2.0**-126
    ref = (v @ v.T)[0, 1]
    for isa in ISAS:
        k = core_gram(t.view(torch.int16).numpy(), {"dtype": "bf16"}, isa=isa)
        if isa == "avx512":
            assert k[0, 1] in (0.0, ref)  # 0.0 where the CPU has the bf16 dot instruction
        else:
            assert k[0, 1] == ref


def test_zero_columns_leave_gram_unchanged():
    k = np.full((3, 3), 2.5)
    core.gram_accumulate(np.zeros((3, 0), np.float32), k)
    assert np.all(k == 2.5)


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate_twice_adds(dtype):
    rng = np.random.default_rng(2)
    arr, kw, _ = make_input(rng.standard_normal((11, 3001)), dtype)
    once = core_gram(arr, kw)
    twice = core_gram(arr, kw)
    core.gram_accumulate(arr, twice, **kw)
    assert np.array_equal(twice, 2 * once)  # inc + inc is exact in float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate_onto_nonzero_gram(dtype):
    rng = np.random.default_rng(3)
    arr, kw, _ = make_input(rng.standard_normal((9, 777)), dtype)
    k0 = rng.standard_normal((9, 9)) * 100  # not even symmetric: it is only added to
    inc = core_gram(arr, kw)
    k = k0.copy()
    core.gram_accumulate(arr, k, **kw)
    assert np.array_equal(k, k0 + inc)


@pytest.mark.parametrize("split", [1, 100, 4096, 5000, 9999])
@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_over_column_chunks(dtype, split):
    rng = np.random.default_rng(4)
    d = 10000
    v = rng.standard_normal((21, d))
    arr, kw, vr = make_input(v, dtype)
    whole = core_gram(arr, kw)
    parts = core_gram(arr[:, :split], kw)
    core.gram_accumulate(arr[:, split:], parts, **kw)
    # Both are within gram_bound of the exact value, so within twice of each other.
    assert np.all(np.abs(whole - parts) <= 2 * gram_bound(vr, dtype))
    # On exactly representable data the chunking cannot matter at all.
    arr, kw, vr = make_input(rng.integers(-8, 9, size=(21, d)) / 4.0, dtype)
    whole = core_gram(arr, kw)
    parts = core_gram(arr[:, :split], kw)
    core.gram_accumulate(arr[:, split:], parts, **kw)
    assert np.array_equal(whole, parts)


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("n", [32, 33])
def test_thread_count_does_not_change_result(n):
    # Column blocks scaled by 2^-40 .. 2^40: partial sums over different column ranges then
    # differ by up to 2^160, so their float64 sum rounds and depends on the order (grouping)
    # in which they are added. With unscaled data, float32 chunk sums of similar size add up
    # exactly in float64 and any grouping would pass unnoticed.
    rng = np.random.default_rng(6)
    d = 300000
    scale = np.exp2(np.repeat(rng.integers(-40, 41, size=d // 1000 + 1), 1000)[:d])
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    xb = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
    for isa in ISAS:
        for arr, kw in [(x, {}), (xb, {"dtype": "bf16"})]:
            one = core_gram(arr, kw, isa=isa, num_threads=1)
            for t in (2, 3, 0):
                assert np.array_equal(one, core_gram(arr, kw, isa=isa, num_threads=t)), (isa, kw, t)


def test_orm_thread_count_does_not_change_result():
    rng = np.random.default_rng(7)
    f = rng.standard_normal((128, 64, 40))
    grams = np.ascontiguousarray(f @ f.transpose(0, 2, 1))  # L²n² = 2^26: the threaded path
    for est in ("biased", "unbiased"):
        one = core.orm_matrix(grams, est, num_threads=1)
        assert np.array_equal(one, core.orm_matrix(grams, est, num_threads=2))


# --------------------------------------------------------------------------- accuracy at d ≈ 1e6

ACCURACY = {}


def test_accuracy_at_one_million_columns():
    """Relative error of the core (float32 input) vs a float64 reference, and the same for a
    naive float32 running sum (np.cumsum, sequential) and torch.mm in float32.

    Data: |N(0,1)| (post-ReLU-like, all products positive: no cancellation, so the relative
    error is well defined and rounding errors pile up in a long float32 sum). Bound for the
    core: every entry is a float64 sum of float32 chunk sums over <= 4096 columns with
    <= ceil(4096/8) + 16 roundings on any path (see gram_bound), so the relative error is
    <= 1.01 · 528 · 2^-24 ≈ 3.2e-5 whatever d is. A single float32 accumulator over d = 1e6
    columns has a worst-case bound of d · 2^-24 ≈ 6e-2 and in practice loses ~1e-3.
    """
    n, d = 32, 1_000_003
    rng = np.random.default_rng(8)
    x = np.abs(rng.standard_normal((n, d), dtype=np.float32))
    x64 = x.astype(np.float64)
    ref = x64 @ x64.T  # products exact in float64; sum error <= d·u64 ≈ 1e-10 relative
    k = np.zeros((n, n))
    core.gram_accumulate(x, k)
    core_err = float(np.max(np.abs(k - ref) / ref))
    per_isa = {}
    for isa in ISAS:
        ki = np.zeros((n, n))
        core.gram_accumulate(x, ki, isa=isa)
        per_isa[isa] = float(np.max(np.abs(ki - ref) / ref))
    pairs = [(0, 0), (0, 1), (2, 3), (5, 9), (10, 31), (17, 17), (20, 21), (30, 31)]
    naive_err = max(
        abs(float(np.cumsum(x[i] * x[j], dtype=np.float32)[-1]) - ref[i, j]) / ref[i, j] for i, j in pairs
    )
    xt = torch.from_numpy(x)
    mm = (xt @ xt.T).double().numpy()
    mm_err = float(np.max(np.abs(mm - ref) / ref))
    ACCURACY.update(core=core_err, naive_running_sum=naive_err, torch_mm=mm_err, **per_isa)
    print(f"\nd={d}: core rel err {core_err:.3g} ({per_isa}); naive float32 running sum "
          f"{naive_err:.3g}; torch.mm float32 {mm_err:.3g}")
    bound = 1.01 * (MAX_CHUNK // 8 + 16) * U32
    assert max(per_isa.values()) <= bound
    assert core_err < naive_err / 100  # chunking must buy at least two orders of magnitude here


# --------------------------------------------------------------------------- ORM references


def cka_from_features(x, y):
    """Linear CKA from column-centred features (Kornblith et al. 2019, eq. for linear kernel)."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def hsic_unbiased(k, l):
    """Song et al. (2012), eq. (5): the unbiased HSIC estimator, from the Grams directly."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def cka_unbiased(k, l):
    return hsic_unbiased(k, l) / math.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))


def layer_features(rng, n, dims, shared=0.7):
    """Features of several 'layers' sharing a latent factor, so CKA values are spread out."""
    z = rng.standard_normal((n, 8))
    out = []
    for d in dims:
        w = rng.standard_normal((8, d))
        noise = rng.standard_normal((n, d))
        mean = rng.normal(0, 2, size=(1, d))  # a non-zero mean that centring must remove
        out.append(shared * z @ w + (1 - shared) * noise * rng.uniform(0.2, 3) + mean)
    return out


def grams_of(features, dtype="float64"):
    n = features[0].shape[0]
    g = np.zeros((len(features), n, n))
    for i, f in enumerate(features):
        arr, kw, _ = make_input(f, dtype)
        core.gram_accumulate(arr, g[i], **kw)
    return g


def orm_of(features, estimator="biased", dtype="float64"):
    return core.orm_matrix(grams_of(features, dtype), estimator)


@HYP
@given(n=st.integers(2, 40), dims=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       shared=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_orm_biased_matches_feature_space_cka(n, dims, shared, seed):
    feats = layer_features(np.random.default_rng(seed), n, dims, shared)
    ref = np.array([[cka_from_features(a, b) for b in feats] for a in feats])
    assert np.allclose(orm_of(feats), ref, rtol=0, atol=1e-9)  # float64 features
    # float32 features: reference from the same rounded values. The Gram's float32 summation
    # error δK (<= gram_bound) moves the centred Gram by ||H δK H||_F <= ||δK||_F, and a cosine
    # moves by at most 2·||δa||/||a|| when a is perturbed by δa, so
    # |ΔCKA_ij| <= 2(ε_i + ε_j), ε_l = ||gram_bound_l||_F / ||H K_l H||_F. ε is large only when
    # centring cancels most of K (features with a large common mean): then float32 sums lose
    # digits before the float64 centring sees them.
    f32 = [f.astype(np.float32).astype(np.float64) for f in feats]
    ref32 = np.array([[cka_from_features(a, b) for b in f32] for a in f32])
    h = np.eye(n) - 1.0 / n
    eps = np.array([np.linalg.norm(gram_bound(v, "float32")) / np.linalg.norm(h @ (v @ v.T) @ h) for v in f32])
    tol = 2 * (eps[:, None] + eps[None, :]) + 1e-12
    assert np.all(np.abs(orm_of(feats, dtype="float32") - ref32) <= tol)
    if shared > 0.5:  # well-conditioned: the mean is not dominant
        assert np.allclose(orm_of(feats, dtype="float32"), ref32, rtol=0, atol=1e-6)


@HYP
@given(n=st.integers(4, 40), dims=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       shared=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_orm_unbiased_matches_song_formula(n, dims, shared, seed):
    feats = layer_features(np.random.default_rng(seed), n, dims, shared)
    # The reference takes the Grams of column-centred features: the unbiased estimator is invariant to
    # a common feature mean (U-centring removes it), and Song's formula on the uncentred Grams cancels
    # large terms (n=4, 53 noise features with a mean: 2e-7 off the exact rational value, the core 4e-13).
    # The core still gets the uncentred features.
    grams = [(f - f.mean(axis=0)) @ (f - f.mean(axis=0)).T for f in feats]
    ref = np.array([[cka_unbiased(a, b) for b in grams] for a in grams])
    assert np.allclose(orm_of(feats, "unbiased"), ref, rtol=0, atol=1e-8)


def test_orm_n2_biased_is_all_ones():
    # With two samples every centred Gram is a multiple of [[1,-1],[-1,1]].
    feats = layer_features(np.random.default_rng(9), 2, [3, 5, 1])
    assert np.allclose(orm_of(feats), 1.0, atol=1e-12)


# --------------------------------------------------------------------------- ORM properties


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_orm_structure(estimator):
    rng = np.random.default_rng(10)
    feats = layer_features(rng, 24, [5, 50, 200, 7, 33, 64], shared=0.5)
    orm = orm_of(feats, estimator)
    assert orm.shape == (6, 6)
    assert np.array_equal(orm, orm.T)
    assert np.all(np.diag(orm) == 1.0)
    assert np.all(np.isfinite(orm))
    if estimator == "biased":
        assert np.all(orm >= 0.0) and np.all(orm <= 1.0 + 1e-12)
    else:
        assert np.all(np.abs(orm) <= 1.0 + 1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_orm_invariances(estimator):
    rng = np.random.default_rng(11)
    feats = layer_features(rng, 20, [30, 45, 12, 60])
    base = orm_of(feats, estimator)
    # Orthogonal rotation of one layer's features (Q from a QR decomposition).
    for i, f in enumerate(feats):
        q, _ = np.linalg.qr(rng.standard_normal((f.shape[1], f.shape[1])))
        rotated = list(feats)
        rotated[i] = f @ q
        assert np.allclose(orm_of(rotated, estimator), base, atol=1e-10, rtol=0)
    # Isotropic scaling: a power of two scales everything exactly, any c up to rounding.
    for c in (4.0, 2.0**-10):
        scaled = [f * c if i % 2 == 0 else f for i, f in enumerate(feats)]
        assert np.array_equal(orm_of(scaled, estimator), base)
    for c in (3.7, 1e-3, 250.0):
        scaled = [f * c if i % 2 == 0 else f for i, f in enumerate(feats)]
        assert np.allclose(orm_of(scaled, estimator), base, atol=1e-12, rtol=0)
    # Same layer twice (scaled): CKA 1.
    orm = orm_of([feats[0], 3.0 * feats[0]], estimator)
    assert abs(orm[0, 1] - 1.0) < 1e-12


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_orm_layer_permutation(estimator):
    rng = np.random.default_rng(12)
    grams = grams_of(layer_features(rng, 16, [4, 9, 16, 25, 36, 49, 64]))
    base = core.orm_matrix(grams, estimator)
    for _ in range(3):
        p = rng.permutation(len(grams))
        permuted = core.orm_matrix(np.ascontiguousarray(grams[p]), estimator)
        assert np.allclose(permuted, base[np.ix_(p, p)], atol=1e-14, rtol=0)


# Tolerance of ORM from half-precision features vs ORM from the float32 features. Measured on
# 20 seeds of the feature model below (n = 32, 6 ReLU layers of width 256): max deviation
# biased 1.9e-5 (fp16) / 1.9e-4 (bf16), unbiased 7.2e-5 (fp16) / 7.4e-4 (bf16) — the input
# rounding (2^-11 resp. 2^-8 relative per element) averaged over d. Tolerances: ~10× margin.
HALF_TOLERANCE = {
    ("float16", "biased"): 2e-4,
    ("bfloat16", "biased"): 2e-3,
    ("float16", "unbiased"): 5e-4,
    ("bfloat16", "unbiased"): 5e-3,
}


def relu_net_features(seed, n=32, layers=6, d=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    out = []
    for _ in range(layers):
        w = torch.randn(d, d, generator=g) / d**0.5
        x = torch.relu(x @ w) + 0.05 * torch.randn(n, d, generator=g)
        out.append(x.numpy().astype(np.float64))
    return out


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_orm_half_precision_close_to_float32(dtype, estimator):
    worst = 0.0
    for seed in range(5):
        feats = relu_net_features(seed)
        ref = orm_of(feats, estimator, "float32")
        worst = max(worst, float(np.max(np.abs(orm_of(feats, estimator, dtype) - ref))))
    print(f"\n{dtype} {estimator}: max |ORM - ORM_fp32| = {worst:.3g}")
    assert worst <= HALF_TOLERANCE[(dtype, estimator)]
    assert worst > 0.0  # the half-precision path really rounded the input


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kind", ["identical-rows", "zero"])
def test_degenerate_layer_gives_nan_row_and_column(estimator, kind):
    rng = np.random.default_rng(13)
    feats = layer_features(rng, 12, [10, 20, 30, 40])
    bad = np.tile(rng.standard_normal((1, 25)), (12, 1)) if kind == "identical-rows" else np.zeros((12, 25))
    with_bad = feats[:2] + [bad] + feats[2:]
    orm = orm_of(with_bad, estimator)
    assert np.all(np.isnan(orm[2, :])) and np.all(np.isnan(orm[:, 2]))
    rest = np.delete(np.delete(orm, 2, axis=0), 2, axis=1)
    assert np.all(np.isfinite(rest))
    assert np.allclose(rest, orm_of(feats, estimator), atol=1e-14, rtol=0)


# --------------------------------------------------------------------------- center_gram


def random_gram(rng, n, d=7):
    f = rng.standard_normal((n, d)) + rng.normal(0, 3, size=(1, d))
    return f @ f.T


@pytest.mark.parametrize("n", [2, 3, 4, 5, 17, 40])
def test_center_biased(n):
    k = random_gram(np.random.default_rng(n), n)
    c = core.center_gram(k, "biased")
    h = np.eye(n) - np.ones((n, n)) / n
    tol = 1e-12 * np.abs(k).max() * n
    assert np.allclose(c, h @ k @ h, atol=tol, rtol=0)
    assert np.all(np.abs(c.sum(axis=0)) <= tol) and np.all(np.abs(c.sum(axis=1)) <= tol)
    assert np.array_equal(core.center_gram(k), c)  # biased is the default


@pytest.mark.parametrize("n", [4, 5, 6, 17, 40])
def test_center_unbiased(n):
    k = random_gram(np.random.default_rng(100 + n), n)
    c = core.center_gram(k, "unbiased")
    kz = k.copy()
    np.fill_diagonal(kz, 0.0)
    s = kz.sum(axis=1)
    ref = kz - s[:, None] / (n - 2) - s[None, :] / (n - 2) + s.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(ref, 0.0)
    tol = 1e-12 * np.abs(k).max() * n
    assert np.allclose(c, ref, atol=tol, rtol=0)
    assert np.all(np.diag(c) == 0.0)
    assert np.all(np.abs(c.sum(axis=1)) <= tol) and np.all(np.abs(c.sum(axis=0)) <= tol)
    # <Ũ_K, Ũ_L> / (n(n−3)) is the Song et al. estimator.
    l = random_gram(np.random.default_rng(200 + n), n)
    cl = core.center_gram(l, "unbiased")
    assert math.isclose(np.sum(c * cl) / (n * (n - 3)), hsic_unbiased(k, l), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("n,estimator", [(0, "biased"), (1, "biased"), (1, "unbiased"), (2, "unbiased"),
                                         (3, "unbiased")])
def test_center_too_few_samples(n, estimator):
    with pytest.raises(OmpqValueError):
        core.center_gram(np.ones((n, n)), estimator)
    with pytest.raises(OmpqValueError):
        core.orm_matrix(np.ones((2, n, n)), estimator)


# --------------------------------------------------------------------------- bad input

X = np.ones((4, 10), np.float32)


def bad_gram_calls():
    k = np.zeros((4, 4))
    ro = np.zeros((4, 4))
    ro.setflags(write=False)
    xi16 = np.ones((4, 10), np.int16)
    return {
        "x 1-D": lambda: core.gram_accumulate(np.ones(10, np.float32), np.zeros((1, 1))),
        "x 3-D": lambda: core.gram_accumulate(np.ones((4, 2, 5), np.float32), k),
        "x 0-D": lambda: core.gram_accumulate(np.array(1.0, np.float32), np.zeros((1, 1))),
        "x no rows": lambda: core.gram_accumulate(np.ones((0, 10), np.float32), np.zeros((0, 0))),
        "gram wrong shape": lambda: core.gram_accumulate(X, np.zeros((4, 5))),
        "gram wrong size": lambda: core.gram_accumulate(X, np.zeros((5, 5))),
        "gram 1-D": lambda: core.gram_accumulate(X, np.zeros(16)),
        "gram float32": lambda: core.gram_accumulate(X, np.zeros((4, 4), np.float32)),
        "gram int64": lambda: core.gram_accumulate(X, np.zeros((4, 4), np.int64)),
        "gram non-contiguous": lambda: core.gram_accumulate(X, np.zeros((8, 8))[::2, ::2]),
        "gram Fortran": lambda: core.gram_accumulate(X, np.asfortranarray(np.zeros((4, 4)))),
        "gram read-only": lambda: core.gram_accumulate(X, ro),
        "x Fortran": lambda: core.gram_accumulate(np.asfortranarray(X), k),
        "x transposed": lambda: core.gram_accumulate(np.ones((10, 4), np.float32).T, k),
        "x column step": lambda: core.gram_accumulate(np.ones((4, 20), np.float32)[:, ::2], k),
        "x reversed columns": lambda: core.gram_accumulate(np.ones((4, 10), np.float32)[:, ::-1], k),
        "x overlapping rows": lambda: core.gram_accumulate(
            np.lib.stride_tricks.as_strided(np.ones(20, np.float32), (4, 10), (8, 4)), k),
        "x int32": lambda: core.gram_accumulate(np.ones((4, 10), np.int32), k),
        "x int16 without bf16": lambda: core.gram_accumulate(xi16, k),
        "x uint8": lambda: core.gram_accumulate(np.ones((4, 10), np.uint8), k),
        "x bool": lambda: core.gram_accumulate(np.ones((4, 10), bool), k),
        "x complex64": lambda: core.gram_accumulate(np.ones((4, 10), np.complex64), k),
        "bf16 with float32": lambda: core.gram_accumulate(X, k, dtype="bf16"),
        "bf16 with float16": lambda: core.gram_accumulate(X.astype(np.float16), k, dtype="bf16"),
        "bf16 with int32": lambda: core.gram_accumulate(np.ones((4, 10), np.int32), k, dtype="bf16"),
        "unknown dtype": lambda: core.gram_accumulate(X, k, dtype="fp8"),
        "unknown isa": lambda: core.gram_accumulate(X, k, isa="sse4"),
        "isa wrong case": lambda: core.gram_accumulate(X, k, isa="AVX2"),
        "negative threads": lambda: core.gram_accumulate(X, k, num_threads=-1),
        "bf16 negative threads": lambda: core.gram_accumulate(xi16, k, dtype="bf16", num_threads=-3),
    }


@pytest.mark.parametrize("case", list(bad_gram_calls()))
def test_gram_bad_input_raises(case):
    with pytest.raises(OmpqValueError):
        bad_gram_calls()[case]()


def test_gram_untouched_after_error():
    k = np.full((4, 4), 7.0)
    for kwargs in ({"isa": "nope"}, {"num_threads": -1}, {"dtype": "bf16"}):
        with pytest.raises(OmpqValueError):
            core.gram_accumulate(X, k, **kwargs)
    assert np.all(k == 7.0)


def bad_orm_calls():
    g = np.stack([np.eye(5)] * 3)
    return {
        "orm no layers": lambda: core.orm_matrix(np.zeros((0, 5, 5))),
        "orm non-square": lambda: core.orm_matrix(np.zeros((3, 5, 4))),
        "orm 2-D": lambda: core.orm_matrix(np.eye(5)),
        "orm 4-D": lambda: core.orm_matrix(np.zeros((2, 2, 5, 5))),
        "orm float32": lambda: core.orm_matrix(g.astype(np.float32)),
        "orm int": lambda: core.orm_matrix(g.astype(np.int64)),
        "orm non-contiguous": lambda: core.orm_matrix(np.zeros((6, 5, 5))[::2]),
        "orm Fortran": lambda: core.orm_matrix(np.asfortranarray(g)),
        "orm unknown estimator": lambda: core.orm_matrix(g, "kernel"),
        "orm negative threads": lambda: core.orm_matrix(g, num_threads=-2),
        "center unknown estimator": lambda: core.center_gram(np.eye(5), "debiased"),
        "center non-square": lambda: core.center_gram(np.zeros((5, 4))),
        "center 1-D": lambda: core.center_gram(np.zeros(25)),
        "center 3-D": lambda: core.center_gram(g),
        "center float32": lambda: core.center_gram(np.eye(5, dtype=np.float32)),
        "center non-contiguous": lambda: core.center_gram(np.eye(10)[::2, ::2]),
    }


@pytest.mark.parametrize("case", list(bad_orm_calls()))
def test_orm_and_center_bad_input_raises(case):
    with pytest.raises(OmpqValueError):
        bad_orm_calls()[case]()


def test_non_native_byte_order_rejected():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 10)).astype(">f4")
    k = np.zeros((4, 4))
    try:
        core.gram_accumulate(x, k)
    except OmpqValueError:
        return
    v = x.astype(np.float64)
    assert np.allclose(k, v @ v.T)  # accepting is fine only if the result is right


@pytest.mark.parametrize("call", ["gram", "orm"])
def test_huge_thread_count_does_not_crash(call):
    # In a subprocess: the failure mode is a crash of the interpreter.
    code = textwrap.dedent(f"""
        import numpy as np
        from ompq_ext import _core as core
        from ompq_ext.errors import OmpqValueError
        try:
            if {call!r} == "gram":
                core.gram_accumulate(np.ones((64, 1000), np.float32), np.zeros((64, 64)), num_threads=100000)
            else:
                g = np.stack([np.eye(32)] * 64) + 1.0
                core.orm_matrix(g, num_threads=100000)
        except OmpqValueError:
            pass
        print("survived")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-500:])


# --------------------------------------------------------------------------- the C++ example


def _compiler_available():
    if os.environ.get("CXX") and shutil.which(os.environ["CXX"].split()[0]):
        return True
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def test_cpp_example_and_an_installed_consumer(tmp_path):
    """The C++ example builds and passes; `cmake --install` exports ompq::core (and ompq::cuda where
    the toolkit was found) for find_package(ompq), which a separate project uses."""
    if not (shutil.which("cmake") and shutil.which("ninja") and _compiler_available()):
        pytest.skip("cmake, ninja or a C++ compiler is missing")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build, prefix, consumer = tmp_path / "build", tmp_path / "prefix", tmp_path / "consumer"

    def run(args, timeout=600):
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    # Always a fresh build dir: an existing one (build/cpp) may be stale relative to cpp/.
    configured = run(["cmake", "-S", root, "-B", build, "-G", "Ninja", "-DOMPQ_BUILD_PYTHON=OFF",
                      "-DOMPQ_BUILD_EXAMPLES=ON", f"-DCMAKE_INSTALL_PREFIX={prefix}"], timeout=300)
    run(["cmake", "--build", build])
    assert "check passed" in run([build / "ompq_example"], timeout=60)
    run(["cmake", "--install", build], timeout=120)
    run(["cmake", "-S", os.path.join(root, "cpp", "examples", "find_package"), "-B", consumer, "-G", "Ninja",
         f"-DCMAKE_PREFIX_PATH={prefix}"], timeout=300)
    run(["cmake", "--build", consumer])
    out = run([consumer / "ompq_consumer"], timeout=60)
    assert "consumer check passed" in out
    if "CUDA toolkit ON" in configured:
        assert "cuda: not built" not in out, "the core was built with CUDA but ompq::cuda was not installed"


@pytest.mark.parametrize(
    "call",
    [
        lambda: core.gram_accumulate(np.ones((4, 8), np.float32), [[0.0] * 4] * 4),
        lambda: core.gram_accumulate(np.float32(1.0), np.zeros((1, 1))),
        lambda: core.gram_accumulate([[1.0, 2.0]], np.zeros((1, 1))),
        lambda: core.center_gram([[1.0, 0.0], [0.0, 1.0]]),
        lambda: core.orm_matrix([np.eye(4)]),
    ],
)
def test_non_arrays_get_our_error(call):
    with pytest.raises(OmpqValueError, match="numpy array"):
        call()


def test_many_samples_use_fewer_slabs_and_stay_exact():
    # 1500 samples: 16 slab buffers would take 275 MiB, so the core caps them at 64 MiB (3 slabs)
    x = np.random.default_rng(0).standard_normal((1500, 3000)).astype(np.float32)
    k = np.zeros((1500, 1500))
    core.gram_accumulate(x, k)
    ref = x.astype(np.float64) @ x.T.astype(np.float64)
    assert np.max(np.abs(k - ref)) <= 1e-4 * np.max(np.abs(ref))
