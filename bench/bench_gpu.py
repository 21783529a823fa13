"""GPU benchmarks (issue 5) under pytest-benchmark; skipped without a CUDA device. The same
workloads as bench/report_gpu.py, which prints the table for docs/BENCHMARKS.md.

    pytest bench/bench_gpu.py --benchmark-only --benchmark-group-by=group
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_gpu import GRAM_SHAPES, ORM_SHAPES  # noqa: E402

from ompq_ext import _core, cuda_kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels.usable()),
                                reason="needs a CUDA device and the core's CUDA kernels")


@pytest.mark.parametrize("n, d", GRAM_SHAPES)
@pytest.mark.parametrize("impl", ["blas", "cuda_cores", "tensor_cores", "torch.matmul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram(benchmark, n, d, impl, dtype):
    if impl == "tensor_cores" and dtype == torch.float32:
        pytest.skip("the tensor-core Gram takes 16-bit features")
    if impl == "blas" and dtype != torch.float32 and not cuda_kernels._blas_takes_16bit(torch.device("cuda", 0)):
        pytest.skip("this torch has no bmm with a float32 result for 16-bit inputs")
    x = torch.randn(n, d, device="cuda").to(dtype)
    k = torch.zeros(n, n, dtype=torch.float64, device="cuda")
    benchmark.group = f"gram {dtype} n={n} d={d}"

    def run():
        if impl == "torch.matmul":
            torch.matmul(x, x.T)
        else:
            cuda_kernels.gram_accumulate(x, k, impl)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)


@pytest.mark.parametrize("layers, n", ORM_SHAPES)
@pytest.mark.parametrize("impl", ["gpu", "copy + cpu core"])
def test_orm(benchmark, layers, n, impl):
    feats = torch.randn(layers, n, 512, device="cuda", dtype=torch.float64)
    grams = feats @ feats.transpose(1, 2)
    benchmark.group = f"orm layers={layers} n={n}"

    def run():
        if impl == "gpu":
            cuda_kernels.orm_matrix(grams, "biased")
        else:
            _core.orm_matrix(grams.cpu().numpy(), "biased")

    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
