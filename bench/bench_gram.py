"""The core's Gram accumulation against torch.mm, and its ORM matrix against per-pair numpy CKA.

Each benchmark group holds the competing implementations of one workload, so pytest-benchmark's
table shows them side by side:

    pytest bench/bench_gram.py --benchmark-only --benchmark-group-by=group

Groups: "gram float32 N=.. d=.." (core vs torch.mm), "gram bfloat16 N=.. d=.." (core vs
converting to float32 then torch.mm, and torch.mm directly on bf16), "orm L=.. N=.." (core vs a
numpy loop over pairs, and numpy with one product). The workloads are defined in
bench/report_gram.py, which prints the same comparison as a markdown table for docs/KERNELS.md.
Targets (issue): float32 core >= 0.8x torch.mm speed; bf16 core faster than convert-then-mm.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_gram as rg  # noqa: E402

IMPLS = {"float32": ["core", "torch.mm"], "bfloat16": ["core", "torch bf16->f32 + mm", "torch.mm bf16"]}
# Ordered by shape so that report_gram.gram_inputs (cache of one) generates each input once.
GRAM_CASES = [(n, d, dtype, impl) for n in rg.GRAM_N for d in rg.GRAM_D for dtype in ("float32", "bfloat16")
              for impl in IMPLS[dtype]]


def _rounds(d):
    return {10_000: 20, 100_000: 8}.get(d, 4)


@pytest.mark.parametrize("n,d,dtype,impl", GRAM_CASES, ids=[f"{c[2]}-N{c[0]}-d{c[1]:.0e}-{c[3]}" for c in GRAM_CASES])
def test_gram(benchmark, n, d, dtype, impl):
    fns = rg.gram_workloads(n, d, dtype)
    benchmark.group = f"gram {dtype} N={n} d={d:.0e}"
    benchmark.extra_info.update(n=n, d=d, dtype=dtype, torch_threads=torch.get_num_threads())
    benchmark.pedantic(fns[impl], rounds=_rounds(d), iterations=1, warmup_rounds=1)


def test_gram_core_matches_torch():
    """Not a benchmark: one cheap check that both sides compute the same Gram."""
    for dtype in ("float32", "bfloat16"):
        data = rg.gram_inputs(32, 10_000)
        x = (data["x32"] if dtype == "float32" else data["xbf"].float()).double()
        k = np.zeros((32, 32))
        core_x = data["np32"] if dtype == "float32" else data["npbf"]
        rg.core.gram_accumulate(core_x, k, **({"dtype": "bf16"} if dtype == "bfloat16" else {}))
        assert np.allclose(k, (x @ x.T).numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("impl", ["core", "numpy pairwise loop", "numpy one product"])
@pytest.mark.parametrize("num_layers,n", [(L, n) for L in rg.ORM_L for n in rg.ORM_N])
def test_orm(benchmark, num_layers, n, impl):
    fns = rg.orm_workloads(num_layers, n)
    benchmark.group = f"orm L={num_layers} N={n}"
    rounds = 5 if (num_layers > 16 and impl == "numpy pairwise loop") else 20
    with rg.blas_threads(1) as note:  # see report_gram.blas_threads
        benchmark.extra_info["blas"] = note
        out = benchmark.pedantic(fns[impl], rounds=rounds, iterations=1, warmup_rounds=1)
    assert np.allclose(out, rg.core.orm_matrix(rg.orm_inputs(num_layers, n)), atol=1e-10)
