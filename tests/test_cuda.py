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
