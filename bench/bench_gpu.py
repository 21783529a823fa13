"""GPU benchmarks (issue 5) under pytest-benchmark; skipped without a CUDA device. The same
workloads as bench/report_gpu.py, which prints the table for docs/BENCHMARKS.md.

    pytest bench/bench_gpu.py --benchmark-only --benchmark-group-by=group
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_gpu import GRAM_SHAPES  # noqa: E402

from ompq_ext.features import cuda_kernels_usable, gram_accumulate_cuda  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels_usable()),
                                reason="needs a CUDA device and the core's CUDA kernels")


@pytest.mark.parametrize("n, d", GRAM_SHAPES)
@pytest.mark.parametrize("impl", ["core", "torch.matmul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram(benchmark, n, d, impl, dtype):
    x = torch.randn(n, d, device="cuda").to(dtype)
    k = torch.zeros(n, n, dtype=torch.float64, device="cuda")
    benchmark.group = f"gram {dtype} n={n} d={d}"

    def run():
        if impl == "core":
            gram_accumulate_cuda(x, k)
        else:
            torch.matmul(x, x.T)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
