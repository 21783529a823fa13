"""The core's CUDA kernels (issue 5). Tests that need a GPU skip cleanly without one; the argument
checks of the bindings run wherever the kernels were built."""

import os
import shutil

import numpy as np
import pytest
import torch

import ompq_ext
from ompq_ext import OmpqValueError, _core
from ompq_ext.features import cuda_kernels_usable, gram_accumulate_cuda
from ompq_ext.models import resnet1d

built = pytest.mark.skipif(not getattr(_core, "cuda_built", False), reason="core built without CUDA")
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels_usable()),
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
])
def test_binding_checks_arguments_before_any_kernel(kwargs, match):
    args = dict(x=1, dtype="f32", n=40, d=5000, row_stride=5000, gram=1, workspace=1,
                workspace_bytes=_core.gram_workspace_bytes(40, 5000), stream=0)
    args.update(kwargs)
    with pytest.raises(OmpqValueError, match=match):
        _core.gram_accumulate_cuda(**args)


@built
def test_workspace_size_follows_tiles_and_chunks():
    # 40 rows: 2 tiles of 32, 3 upper-triangle pairs; 5000 columns: 2 chunks of 4096.
    assert _core.gram_workspace_bytes(40, 5000) == 2 * 3 * 32 * 32 * 4
    assert _core.gram_workspace_bytes(32, 4096) == 1 * 1 * 32 * 32 * 4


def cpu_gram(x: torch.Tensor) -> np.ndarray:
    k = np.zeros((x.shape[0], x.shape[0]))
    if x.dtype == torch.bfloat16:
        _core.gram_accumulate(x.contiguous().view(torch.int16).numpy(), k, dtype="bf16")
    else:
        _core.gram_accumulate(x.contiguous().numpy(), k)
    return k


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, d", [(1, 1), (5, 31), (32, 4096), (33, 4097), (64, 10000), (100, 333), (257, 70000)])
def test_gram_matches_the_cpu_core(dtype, n, d):
    g = torch.Generator().manual_seed(n * 7919 + d)
    full = torch.randn(n, d + 3, generator=g).to(dtype)
    x = full[:, 1:d + 1]  # rows with a stride larger than d
    gram = torch.zeros(n, n, dtype=torch.float64, device="cuda")
    gram_accumulate_cuda(x.cuda(), gram)
    gram_accumulate_cuda(x.cuda(), gram)  # accumulates
    got = gram.cpu().numpy()
    want = 2 * cpu_gram(x)
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want))) + 1e-30
    # Both sum float32 products over chunks of 4096 columns, in different orders within a chunk.
    assert np.max(np.abs(got - want) / scale) < 1e-5
    assert np.array_equal(got, got.T)


@gpu
def test_gram_is_reproducible_bit_for_bit():
    x = torch.randn(96, 50000, device="cuda")
    a = torch.zeros(96, 96, dtype=torch.float64, device="cuda")
    b = torch.zeros_like(a)
    gram_accumulate_cuda(x, a)
    gram_accumulate_cuda(x, b)
    assert torch.equal(a, b)


@gpu
def test_plan_on_a_gpu_model_matches_the_cpu_and_leaves_it_there():
    torch.manual_seed(0)
    model = resnet1d(width=16).eval()
    x = torch.randn(48, 1, 40)
    cpu_plan = ompq_ext.plan(model, [x], "3bits", progress=False)
    model_gpu = model.cuda()
    gpu_plan = ompq_ext.plan(model_gpu, [x.cuda()], "3bits", progress=False)
    assert all(p.device.type == "cuda" for p in model_gpu.parameters())
    assert np.max(np.abs(gpu_plan.orm - cpu_plan.orm)) < 1e-5
    assert gpu_plan.bits == cpu_plan.bits


@gpu
@pytest.mark.parametrize("bits, signed", [(2, True), (4, True), (8, True), (8, False), (3, False)])
@pytest.mark.parametrize("shape, axis", [((64, 3, 3, 3), 0), ((16, 300), 0), ((8, 32, 7, 7), 1), ((5, 7, 11), 2),
                                         ((40000,), None), ((4, 64, 56, 56), None)])
def test_fake_quant_forward_equals_torch_on_cuda_bit_for_bit(bits, signed, shape, axis):
    from ompq_ext.quant.ops import fake_quantize, quant_range

    qmin, qmax = quant_range(bits, signed)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(shape, device="cuda", generator=g) * 3
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
@pytest.mark.parametrize("shape, axis", [((64, 3, 3, 3), 0), ((16, 30000), 0), ((4, 64, 56, 56), None)])
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
        xs, ss, zs = (t.to(device).requires_grad_() for t in (x, scale, zero))
        y = fake_quantize(xs, ss, zs, bits=4, signed=False, axis=axis, grad_factor=0.5)
        y.backward(grad.to(device))
        results.append([t.grad.cpu() for t in (xs, ss, zs)] + [y.detach().cpu()])
    (gx0, gs0, gz0, y0), (gx1, gs1, gz1, y1) = results
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert torch.allclose(gs0, gs1, rtol=1e-5, atol=1e-5) and torch.allclose(gz0, gz1, rtol=1e-5, atol=1e-5)


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
