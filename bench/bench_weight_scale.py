"""MSE weight-scale search: `weight_scale(w, bits, "mse")` on the CPU (one core kernel,
`_core.mse_weight_scales`) against the torch implementation it replaced (kept below as
`old_weight_scale`), on every conv / linear weight of ResNet-18 (11.7M weights) at 2, 4 and 8 bits.
The minmax scales (no search) are the floor.

    pytest bench/bench_weight_scale.py --benchmark-only --benchmark-group-by=group
    python bench/bench_weight_scale.py [--repeats N]   # interleaved medians and the speed-up
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine  # noqa: E402

from ompq_ext.models import resnet18  # noqa: E402
from ompq_ext.quant.scales import _mse_search_torch, weight_scale  # noqa: E402
from ompq_ext.quant.ops import quant_range  # noqa: E402

BITS = (2, 4, 8)


def old_weight_scale(weight, bits, axis=0):
    """The torch implementation before the core kernel: 81 fake quantizations, float32 error sums."""
    _, qmax = quant_range(bits, signed=True)
    flat = weight.detach().float().movedim(axis, 0)
    flat = flat.reshape(flat.shape[0], -1)
    base = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    return _mse_search_torch(flat, base, bits)  # the same loop, kept in the library for CUDA weights


def resnet18_weights():
    torch.manual_seed(0)
    return [p for p in resnet18().parameters() if p.dim() > 1]


def workloads(weights):
    """name -> callable: the scales of every weight at every bit-width in BITS."""
    return {
        "kernel": lambda: [weight_scale(w, b, "mse") for b in BITS for w in weights],
        "torch (old)": lambda: [old_weight_scale(w, b) for b in BITS for w in weights],
        "minmax": lambda: [weight_scale(w, b, "minmax") for b in BITS for w in weights],
    }


ROUNDS = {"kernel": 10, "torch (old)": 3, "minmax": 10}


@pytest.fixture(scope="module")
def weights():
    return resnet18_weights()


@pytest.mark.parametrize("impl", list(ROUNDS))
def test_weight_scale_resnet18(benchmark, weights, impl):
    benchmark.group = f"weight_scale mse resnet18 ({sum(w.numel() for w in weights)} weights, bits {BITS})"
    benchmark.extra_info.update(bits=list(BITS), torch_threads=torch.get_num_threads())
    benchmark.pedantic(workloads(weights)[impl], rounds=ROUNDS[impl], iterations=1, warmup_rounds=1)


def test_same_scales(weights):
    """Not a benchmark: the kernel picks the old implementation's scales (but for near-ties: none here)."""
    got = torch.cat(workloads(weights)["kernel"]())
    old = torch.cat(workloads(weights)["torch (old)"]())
    assert (got != old).sum().item() == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    weights = resnet18_weights()
    medians = interleaved_medians(workloads(weights), args.repeats)
    print(machine())
    print(f"ResNet-18, {sum(w.numel() for w in weights)} weights in {len(weights)} tensors, bits {BITS}; "
          f"median of {args.repeats}:")
    for name, t in medians.items():
        print(f"  {name:12s} {t:8.3f} s")
    print(f"  speed-up of the kernel over the old torch search: {medians['torch (old)'] / medians['kernel']:.1f}x")


if __name__ == "__main__":
    main()
