"""plan() against the reference-style pipeline (bench/reference_pipeline.py): store every
layer's features, pairwise centred-Gram CKA in numpy, SLSQP, round to nearest. Both sides in
one pytest-benchmark group per batch size, so the table shows their ratio.
`python bench/report_reference.py` prints the same comparison with the ORM stage alone and
peak memory, for docs/BENCHMARKS.md.

    pytest bench/bench_reference.py --benchmark-only --benchmark-group-by=group
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_pipeline as ref  # noqa: E402
from report_reference import budget_bits, core_orm_stage, run_plan, run_reference, setup  # noqa: E402


@pytest.fixture(scope="module", params=[32, 64], ids=lambda n: f"N{n}")
def resnet_batch(request):
    model, x = setup(request.param)
    with torch.no_grad():
        model(x)  # warm up
    return model, x


def test_plan(benchmark, resnet_batch):
    model, x = resnet_batch
    benchmark.group = f"resnet18-224px-N{len(x)}-end-to-end"
    p = benchmark.pedantic(lambda: run_plan(model, x), rounds=3, warmup_rounds=1)
    assert p.totals["size_bits"] <= budget_bits()


def test_reference(benchmark, resnet_batch):
    model, x = resnet_batch
    benchmark.group = f"resnet18-224px-N{len(x)}-end-to-end"
    r = benchmark.pedantic(lambda: run_reference(model, x), rounds=3, warmup_rounds=1)
    benchmark.extra_info["over_budget"] = r["over_budget"]


def test_orm_stage_core(benchmark, resnet_batch):
    model, x = resnet_batch
    _, feats, _ = ref.store_features(model, x)
    benchmark.group = f"resnet18-224px-N{len(x)}-orm-stage"
    benchmark.pedantic(lambda: core_orm_stage(feats), rounds=3, warmup_rounds=1)


def test_orm_stage_reference(benchmark, resnet_batch):
    model, x = resnet_batch
    _, feats, _ = ref.store_features(model, x)
    benchmark.group = f"resnet18-224px-N{len(x)}-orm-stage"
    benchmark.pedantic(lambda: ref.orm_stage(feats), rounds=3, warmup_rounds=1)
