"""Fake quantization: `ompq_ext.quant.ops.fake_quantize` against torch's fake-quant ops.

Each benchmark group pairs the implementations of one workload and pass, so pytest-benchmark's
table shows them side by side:

    pytest bench/bench_fake_quant.py --benchmark-only --benchmark-group-by=group

Groups: "fake_quant <pass> <workload>", pass one of
  fwd      ours vs torch.fake_quantize_per_{channel,tensor}_affine (and the bare binding, "core");
  fwd+bwd  the same under autograd, x requiring grad (STE with clipping mask);
  LSQ      x and scale (and the zero point where asymmetric) requiring grad, against
           torch._fake_quantize_learnable_per_{channel,tensor}_affine.
The workloads are defined in bench/report_fake_quant.py, which prints the same comparison as a
markdown table (interleaved repeats, ratios) for docs/KERNELS.md.
Target (issue 3): fwd+bwd >= 1.5x the torch op on weight- and activation-sized tensors.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_fake_quant as rf  # noqa: E402

CASES = {**rf.BIG, **rf.SMALL, **rf.LAST_AXIS}
IMPLS = {"fwd": ["ours", "torch", "core"], "fwd+bwd": ["ours", "torch"], "LSQ": ["ours", "torch"]}
# Ordered by workload so that report_fake_quant.inputs (a cache of one) builds each input once.
PARAMS = [(name, mode, impl) for name in CASES for mode in rf.MODES for impl in IMPLS[mode]]


def _id(name):
    """ASCII id for -k selection: 'conv-weight-512x512x3x3'."""
    return name.split(",")[0].replace("×", "x").replace(" ", "-")


def _rounds(numel):
    return 5 if numel >= 8_000_000 else 10 if numel >= 1_000_000 else 100


@pytest.mark.parametrize("name,mode,impl", PARAMS, ids=[f"{_id(n)}-{m}-{i}" for n, m, i in PARAMS])
def test_fake_quant(benchmark, name, mode, impl):
    shape, axis, bits, signed = CASES[name]
    fn = rf.workloads(shape, axis, bits, signed, mode)[impl]
    numel = rf.inputs(shape, axis, bits, signed)["x"].numel()
    benchmark.group = f"fake_quant {mode} {name}"
    benchmark.extra_info.update(shape=list(shape), axis=axis, bits=bits, signed=signed,
                                torch_threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=_rounds(numel), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(CASES), ids=[_id(n) for n in CASES])
def test_same_forward(name):
    """Not a benchmark: both sides compute the same forward, bit for bit."""
    rf.check_same(*CASES[name])
