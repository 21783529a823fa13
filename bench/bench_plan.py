"""plan() end to end against one plain no-grad forward pass of the same batch.

ResNet-18 shape (random init), 224 x 224 inputs, N = 32: both sides in one
pytest-benchmark group, so the table shows their ratio. Target: plan <= 1.25 x
forward. `python bench/report_plan.py` prints the same comparison, interleaved,
with the memory figures, for docs/BENCHMARKS.md.

    pytest bench/bench_plan.py --benchmark-only --benchmark-group-by=group
"""

import pytest
import torch

import ompq_ext
from ompq_ext.models import resnet18


@pytest.fixture(scope="module")
def resnet_batch():
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(32, 3, 224, 224)
    with torch.no_grad():
        model(x)  # warm up the allocator and oneDNN
    return model, x


@pytest.mark.benchmark(group="resnet18-224px-N32")
def test_forward(benchmark, resnet_batch):
    model, x = resnet_batch

    def forward():
        with torch.no_grad():
            model(x)

    benchmark.pedantic(forward, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="resnet18-224px-N32")
def test_plan(benchmark, resnet_batch):
    model, x = resnet_batch
    plan = benchmark.pedantic(lambda: ompq_ext.plan(model, [x], "4.5MiB", method="ompq", progress=False), rounds=5,
                              warmup_rounds=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in plan.timing.items()})
    assert plan.totals["size_bytes"] <= 4.5 * 2**20
