"""The core's CUDA kernels (issue 5). Tests that need a GPU skip cleanly without one; the argument
checks of the bindings run wherever the kernels were built."""

import math
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ompq_ext
from ompq_ext import OmpqValueError, _core, cuda_kernels
from ompq_ext.features import GramCollector, observe
from ompq_ext.layers import find_layers
from ompq_ext.models import resnet1d

def leaf_on(t: torch.Tensor, device: str) -> torch.Tensor:
    """A fresh leaf copy of t on device that collects a gradient (t.to(device) of a tensor that already requires
    grad is a non-leaf, whose .grad stays None)."""
    return t.detach().to(device).requires_grad_()


def grads_of(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Their gradients on the CPU; a missing one fails the test instead of skipping the comparison."""
    missing = [i for i, t in enumerate(tensors) if t.grad is None]
    assert not missing, f"tensor(s) {missing} got no gradient (a non-leaf, or not part of the graph)"
    return [t.grad.cpu() for t in tensors]


def test_a_missing_gradient_fails_loudly():
    # The defect that hid 11 failures: requires_grad on the CPU pass, then .to() on the next pass.
    x = torch.ones(3).requires_grad_()
    non_leaf = x.to(torch.float64).requires_grad_()
    (non_leaf * 2).sum().backward()
    with pytest.raises(AssertionError, match="no gradient"):
        grads_of(non_leaf)
    leaf = leaf_on(x, "cpu")
    (leaf * 2).sum().backward()
    assert torch.equal(grads_of(leaf)[0], torch.full((3,), 2.0))


built = pytest.mark.skipif(not getattr(_core, "cuda_built", False), reason="core built without CUDA")
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels.usable()),
                         reason="needs a CUDA device and the core's CUDA kernels")


def test_cuda_kernels_are_built_where_nvcc_is_found():
    if shutil.which("nvcc") is None or "OMPQ_CUDA=OFF" in os.environ.get("CMAKE_ARGS", ""):
        pytest.skip("no CUDA toolkit on this machine (or the build was asked for none)")
    assert _core.cuda_built, "nvcc is on PATH but the core was built without its CUDA kernels"


@built
@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="f64"), "dtype"),
    (dict(x=0), "null"),
    (dict(row_stride=10), "row_stride"),
    (dict(workspace_bytes=16), "workspace_bytes"),
    (dict(kernel="tf32"), "kernel"),
])
def test_binding_checks_arguments_before_any_kernel(kwargs, match):
    args = dict(x=1, dtype="f32", n=40, d=5000, row_stride=5000, gram=1, workspace=1,
                workspace_bytes=_core.gram_workspace_bytes(40, 5000), stream=0)
    args.update(kwargs)
    with pytest.raises(OmpqValueError, match=match):
        _core.gram_accumulate_cuda(**args)


@built
def test_workspace_size_follows_tiles_and_chunks():
    # 40 rows: 2 tiles of 32, 3 upper-triangle pairs; 5000 columns: 5 chunks of 1024.
    assert _core.gram_workspace_bytes(40, 5000) == 5 * 3 * 32 * 32 * 4
    assert _core.gram_workspace_bytes(32, 1024) == 1 * 1 * 32 * 32 * 4
    # Wider features go in launches of 32768 chunks, which share the workspace.
    assert _core.gram_workspace_bytes(32, 10**9) == 32768 * 32 * 32 * 4
    # ORM: centred Grams, row and column sums, squared norms, the L x L product.
    assert _core.orm_workspace_bytes(3, 8) == (3 * 64 + 3 * 16 + 3 + 9) * 8


@built
@pytest.mark.parametrize("kwargs, match", [
    (dict(estimator="kendall"), "estimator"),
    (dict(n=1), "biased estimator needs n"),
    (dict(n=3, estimator="unbiased"), "unbiased estimator needs n"),
    (dict(layers=0), "layers"),
    (dict(grams=0), "null"),
    (dict(workspace_bytes=8), "workspace_bytes"),
])
def test_orm_binding_checks_arguments_before_any_kernel(kwargs, match):
    args = dict(grams=1, layers=3, n=8, estimator="biased", orm=1, workspace=1,
                workspace_bytes=_core.orm_workspace_bytes(3, 8), stream=0)
    args.update(kwargs)
    with pytest.raises(OmpqValueError, match=match):
        _core.orm_matrix_cuda(**args)


def cpu_gram(x: torch.Tensor) -> np.ndarray:
    k = np.zeros((x.shape[0], x.shape[0]))
    if x.dtype == torch.bfloat16:
        _core.gram_accumulate(x.contiguous().view(torch.int16).numpy(), k, dtype="bf16")
    else:
        _core.gram_accumulate(x.contiguous().numpy(), k)
    return k


GRAM_CASES = [(torch.float32, "cuda_cores"), (torch.float16, "cuda_cores"), (torch.bfloat16, "cuda_cores"),
              (torch.float16, "tensor_cores"), (torch.bfloat16, "tensor_cores"), (torch.bfloat16, "auto"),
              (torch.float32, "auto"), (torch.float32, "blas"), (torch.float16, "blas"), (torch.bfloat16, "blas")]


def skip_blas_without_16bit(dtype, kernel):
    if kernel == "blas" and dtype != torch.float32 and not cuda_kernels._blas_takes_16bit(torch.device("cuda", 0)):
        pytest.skip(f"torch {torch.__version__} has no bmm with a float32 result for 16-bit inputs")


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 24), d=st.integers(1, 3000), chunk=st.sampled_from([1, 7, 64, 1000, 4096]),
       pad=st.integers(0, 5), batch_bytes=st.sampled_from([4, 1 << 20]), data=st.data())
def test_blas_gram_matches_float64_on_the_cpu(n, d, chunk, pad, batch_bytes, data):
    # The cuBLAS path's chunking, batching and strides run unchanged on the CPU (torch.bmm there is MKL's).
    seed = data.draw(st.integers(0, 2**31 - 1))
    full = torch.randn(n, d + pad, generator=torch.Generator().manual_seed(seed))
    x = full[:, pad:]  # rows with a stride larger than d
    gram = torch.full((n, n), 0.5, dtype=torch.float64)
    old = cuda_kernels._BLAS_BATCH_BYTES
    cuda_kernels._BLAS_BATCH_BYTES = batch_bytes  # 4: one chunk per batch
    try:
        cuda_kernels.gram_blas(x, gram, chunk)
    finally:
        cuda_kernels._BLAS_BATCH_BYTES = old
    want = 0.5 + (x.double() @ x.double().T).numpy()
    got = gram.numpy()
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    assert np.max(np.abs(got - want) / scale) < 1e-5
    assert np.array_equal(got, got.T)


@gpu
@pytest.mark.parametrize("dtype, kernel", GRAM_CASES)
@pytest.mark.parametrize("n, d", [(1, 1), (5, 31), (32, 1024), (33, 1025), (64, 10000), (100, 333), (257, 70000)])
def test_gram_matches_the_cpu_core(dtype, kernel, n, d):
    skip_blas_without_16bit(dtype, kernel)
    g = torch.Generator().manual_seed(n * 7919 + d)
    full = torch.randn(n, d + 3, generator=g).to(dtype)
    x = full[:, 1:d + 1]
    on_gpu = full.cuda()[:, 1:d + 1]  # rows with a stride larger than d
    gram = torch.zeros(n, n, dtype=torch.float64, device="cuda")
    cuda_kernels.gram_accumulate(on_gpu, gram, kernel)
    cuda_kernels.gram_accumulate(on_gpu, gram, kernel)  # accumulates
    got = gram.cpu().numpy()
    want = 2 * cpu_gram(x)
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want))) + 1e-30
    # Both sum float32 products over chunks of columns, in different orders within a chunk.
    assert np.max(np.abs(got - want) / scale) < 1e-5
    assert np.array_equal(got, got.T)


@gpu
def test_gram_of_features_wider_than_one_launch():
    # 2 rows of 33.6 M columns: two launches (32768 chunks of 1024 columns each) summed into K.
    d = 32768 * 1024 + 5000
    x = torch.randn(2, d, device="cuda").to(torch.bfloat16)
    gram = torch.zeros(2, 2, dtype=torch.float64, device="cuda")
    cuda_kernels.gram_accumulate(x, gram)
    want = x.double() @ x.double().T
    assert torch.max(torch.abs(gram - want) / want.diagonal().max()) < 1e-5


@gpu
def test_gram_of_float64_features_is_exact_and_the_gram_is_checked():
    x = torch.randn(7, 500, device="cuda", dtype=torch.float64)
    gram = torch.zeros(7, 7, dtype=torch.float64, device="cuda")
    cuda_kernels.gram_accumulate(x, gram)
    assert torch.allclose(gram, x @ x.T, rtol=1e-14, atol=0)
    with pytest.raises(OmpqValueError, match="7 x 7 float64"):
        cuda_kernels.gram_accumulate(x.float(), torch.zeros(7, 7, device="cuda"))


@gpu
def test_fake_quant_of_an_empty_cuda_tensor():
    from ompq_ext.quant.ops import fake_quantize

    x = torch.empty(0, 8, device="cuda", requires_grad=True)
    scale = torch.full((8,), 0.1, device="cuda", requires_grad=True)
    y = fake_quantize(x, scale, bits=4, axis=1)
    y.sum().backward()
    assert y.shape == (0, 8) and torch.equal(scale.grad, torch.zeros(8, device="cuda"))


@gpu
def test_tensor_cores_refuse_float32():
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(OmpqValueError, match="float32"):
        cuda_kernels.gram_accumulate(x, torch.zeros(4, 4, dtype=torch.float64, device="cuda"), "tensor_cores")


@gpu
@pytest.mark.parametrize("dtype, kernel", GRAM_CASES)
def test_gram_is_reproducible_bit_for_bit(dtype, kernel):
    skip_blas_without_16bit(dtype, kernel)
    x = torch.randn(96, 50000, device="cuda").to(dtype)
    a = torch.zeros(96, 96, dtype=torch.float64, device="cuda")
    b = torch.zeros_like(a)
    cuda_kernels.gram_accumulate(x, a, kernel)
    cuda_kernels.gram_accumulate(x, b, kernel)
    assert torch.equal(a, b)


def random_grams(layers, n, seed):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n, int(torch.randint(1, 300, (1,), generator=g)), generator=g, dtype=torch.float64)
             for _ in range(layers)]
    feats[-1] = feats[0] * 3 + 0.1 * torch.randn(feats[0].shape, generator=g, dtype=torch.float64)  # a near twin
    return torch.stack([f @ f.T for f in feats])


@gpu
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("layers, n", [(1, 4), (2, 5), (7, 32), (30, 64), (5, 300)])
def test_orm_on_the_gpu_matches_the_cpu_core(estimator, layers, n):
    grams = random_grams(layers, n, seed=layers * 100 + n)
    want = _core.orm_matrix(grams.numpy(), estimator)
    got = cuda_kernels.orm_matrix(grams.cuda(), estimator)
    assert np.max(np.abs(got - want)) < 1e-12
    assert np.array_equal(got, got.T) and np.all(np.diagonal(got) == 1.0)
    again = cuda_kernels.orm_matrix(grams.cuda(), estimator)
    assert np.array_equal(got, again)


@gpu
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_orm_on_the_gpu_marks_a_constant_layer_with_nan(estimator):
    grams = random_grams(4, 16, seed=3)
    grams[2] = 5.0  # the Gram of a feature equal for every sample: its centred form is zero
    got = cuda_kernels.orm_matrix(grams.cuda(), estimator)
    want = _core.orm_matrix(grams.numpy(), estimator)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.all(np.isnan(got[2])) and np.all(np.isnan(got[:, 2])) and not np.isnan(got[0, 1])


@gpu
def test_gram_collector_keeps_the_grams_on_the_gpu():
    torch.manual_seed(0)
    model = resnet1d(width=16).eval().cuda()
    layers = find_layers(model)
    x = torch.randn(24, 1, 40, device="cuda")
    collector = GramCollector(layers, 24)
    observe(model, layers, ((x,), {}), [collector])
    assert collector.device_grams is not None and collector.device_grams.device.type == "cuda"
    picked = collector.grams_of([2, 0])
    assert picked.is_cuda and torch.equal(picked[1], collector.device_grams[0])
    on_cpu = GramCollector(layers, 24)
    observe(model.cpu(), layers, ((x.cpu(),), {}), [on_cpu])
    want = on_cpu.grams_of([2, 0])
    assert np.max(np.abs(picked.cpu().numpy() - want) / np.abs(want).max()) < 1e-5


@gpu
def test_plan_on_a_gpu_model_matches_the_cpu_and_leaves_it_there(monkeypatch):
    torch.manual_seed(0)
    model = resnet1d(width=16).eval()
    x = torch.randn(48, 1, 40)
    cpu_plan = ompq_ext.plan(model, [x], "3bits", method="ompq", progress=False)  # OMPQ: its ORM is compared
    model_gpu = model.cuda()
    gpu_plan = ompq_ext.plan(model_gpu, [x.cuda()], "3bits", method="ompq", progress=False)
    assert all(p.device.type == "cuda" for p in model_gpu.parameters())
    assert gpu_plan.bits == cpu_plan.bits
    # The ORM against the CPU core's ORM of the same GPU features (each Gram formed on the host): what the GPU
    # path adds is float32 rounding inside the Gram's column chunks, which moves this model's ORM by 0.7e-6
    # when simulated on the CPU (the CPU core's own float32 products: 1.1e-6); 1e-5 leaves a tenfold margin.
    # Against the CPU plan the ORM differs by more (3.7e-5 on an H200): the GPU's convolutions (cuDNN, TF32
    # where allowed) give other features, and TF32 rounding simulated on the CPU moves this ORM by 1.2e-4.
    add = GramCollector.add
    monkeypatch.setattr(GramCollector, "add", lambda self, i, out, source="": add(self, i, out.cpu(), source))
    host_plan = ompq_ext.plan(model_gpu, [x.cuda()], "3bits", method="ompq", progress=False)
    assert np.max(np.abs(gpu_plan.orm - host_plan.orm)) < 1e-5


@gpu
@pytest.mark.parametrize("bits, signed", [(2, True), (4, True), (8, True), (8, False), (3, False)])
@pytest.mark.parametrize("shape, axis", [((64, 3, 3, 3), 0), ((16, 300), 0), ((8, 32, 7, 7), 1), ((5, 7, 11), 2),
                                         ((40000,), None), ((4, 64, 56, 56), None),
                                         # four elements per thread with a 0-3 element tail; runs of 12 per channel
                                         ((40003,), None), ((6, 8, 12), 1)])
@pytest.mark.parametrize("offset", [0, 1])  # 1: x starts 4 bytes past an aligned address (no float4 loads)
def test_fake_quant_forward_equals_torch_on_cuda_bit_for_bit(bits, signed, shape, axis, offset):
    from ompq_ext.quant.ops import fake_quantize, quant_range

    qmin, qmax = quant_range(bits, signed)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = (torch.randn(math.prod(shape) + offset, device="cuda", generator=g) * 3)[offset:].view(shape)
    channels = 1 if axis is None else shape[axis]
    scale = torch.rand(channels, device="cuda", generator=g) * 0.2 + 0.01
    zero = torch.zeros(channels, device="cuda") if signed else torch.randint(0, qmax // 2 + 1, (channels,), device="cuda").float()
    x[..., 0] = scale.max() * 2.5  # exact .5 ties
    got = fake_quantize(x, scale, zero if not signed else None, bits=bits, signed=signed, axis=axis)
    if axis is None:
        want = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero.item()), qmin, qmax)
    else:
        want = torch.fake_quantize_per_channel_affine(x, scale, zero.int(), axis, qmin, qmax)
    assert torch.equal(got, want)


@gpu
@pytest.mark.parametrize("shape, axis", [((64, 3, 3, 3), 0), ((16, 30000), 0), ((4, 64, 56, 56), None),
                                         # channels last: the column view (short last row, wide periods)
                                         ((40000, 3), -1), ((5, 7, 11), 2), ((2, 300, 9), 1), ((3, 5000), -1),
                                         ((70000, 1), -1)])  # one channel: one run
def test_fake_quant_gradients_on_cuda_match_the_cpu_core(shape, axis):
    from ompq_ext.quant.ops import fake_quantize

    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    channels = 1 if axis is None else shape[axis]
    scale = torch.rand(channels) * 0.1 + 0.02
    zero = torch.full((channels,), 3.0)
    grad = torch.randn(shape)
    results = []
    for device in ("cpu", "cuda"):
        xs, ss, zs = (leaf_on(t, device) for t in (x, scale, zero))
        y = fake_quantize(xs, ss, zs, bits=4, signed=False, axis=axis, grad_factor=0.5)
        y.backward(grad.to(device))
        results.append(grads_of(xs, ss, zs) + [y.detach().cpu()])
    (gx0, gs0, gz0, y0), (gx1, gs1, gz1, y1) = results
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert torch.allclose(gs0, gs1, rtol=1e-5, atol=1e-5) and torch.allclose(gz0, gz1, rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.parametrize("shape, axis", [((64, 3, 3, 3), 0), ((5, 7, 11), 2), ((4, 64, 56, 56), None)])
def test_straight_through_gradient_alone_on_cuda_matches_the_cpu_core(shape, axis):
    # Fixed scale and zero point: the backward is the elementwise masked pass, no sums.
    from ompq_ext.quant.ops import fake_quantize

    torch.manual_seed(1)
    x = torch.randn(shape) * 2
    scale = torch.rand(1 if axis is None else shape[axis]) * 0.1 + 0.02
    grad = torch.randn(shape)
    grads = []
    for device in ("cpu", "cuda"):
        xs = leaf_on(x, device)
        fake_quantize(xs, scale.to(device), bits=3, axis=axis).backward(grad.to(device))
        grads += grads_of(xs)
    assert torch.equal(grads[0], grads[1])
    assert (grads[0] == 0).any() and (grads[0] != 0).any()  # both sides of the clipping mask occur


@gpu
def test_quantize_a_gpu_model_matches_the_cpu():
    torch.manual_seed(0)
    model = resnet1d(width=16).eval()
    x = torch.randn(64, 1, 40)
    plan = ompq_ext.plan(model, [x], "4bits", progress=False)
    q_cpu = ompq_ext.quantize(model, plan, calib=[x], num_calib=64, progress=False)
    q_gpu = ompq_ext.quantize(model.cuda(), plan, calib=[x.cuda()], num_calib=64, progress=False)
    assert all(p.device.type == "cuda" for p in q_gpu.parameters())
    with torch.no_grad():
        a, b = q_cpu(x), q_gpu(x.cuda()).cpu()
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()


@built
def test_fake_quant_bindings_check_arguments_before_any_kernel():
    with pytest.raises(OmpqValueError, match="device pointers"):
        _core.fake_quant_forward_cuda(0, 1, 1, 4, 10, 1, 1, -8, 7, 0)
    with pytest.raises(OmpqValueError, match="qmin"):
        _core.fake_quant_forward_cuda(1, 1, 1, 4, 10, 1, 1, 7, -8, 0)
    with pytest.raises(OmpqValueError, match="workspace_bytes"):
        _core.fake_quant_backward_cuda(1, 1, 1, 1, 0, 1, 4, 10000, 1, 1, -8, 7, 1.0, 1, 8, 0)
    # 4 channels x 2 segments of 8192 elements, two float64 sums each
    assert _core.fake_quant_backward_workspace_bytes(1, 4, 10000) == 4 * 2 * 2 * 8
    # channels last, 40000 x 3: rows of 1023 columns (341 periods), 118 rows in 2 tiles of 64 rows
    assert _core.fake_quant_backward_workspace_bytes(40000, 3, 1) == 2 * 1023 * 2 * 8


@gpu
@pytest.mark.parametrize("shape, axis, group_size", [((6, 20), 0, 8), ((5, 3, 3, 3), 0, 4), ((2, 9, 2, 2), 1, 3),
                                                     ((64, 300), 0, 128)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_group_wise_fake_quant_matches_the_cpu(shape, axis, group_size, bits):
    from ompq_ext.quant.ops import fake_quantize
    from ompq_ext.quant.scales import weight_scale

    x = torch.randn(shape, generator=torch.Generator().manual_seed(bits)) * 2
    scale = weight_scale(x, bits, "mse", axis, group_size)
    want = fake_quantize(x, scale, bits=bits, axis=axis, group_size=group_size)
    got = fake_quantize(x.cuda(), scale.cuda(), bits=bits, axis=axis, group_size=group_size)
    assert torch.equal(got.cpu(), want)
