"""The allocation-quality study's own plans (bench/quality/allocators.py: the baselines and the
recording wrapper) and its CI smoke run: the default method must not fall below uniform precision at
3 bits on MNIST-1D, nor at 4 bits on MiniLM where that testbed is installed."""

import sys
from pathlib import Path

import pytest
import torch

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))
sys.path.insert(0, str(QUALITY.parent))

import allocators as al  # noqa: E402

import ompq_ext  # noqa: E402
from ompq_ext.allocators import OutputError  # noqa: E402
from ompq_ext.models import mlp  # noqa: E402

torch.manual_seed(0)
X = torch.randn(64, 12)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = mlp(12, (24, 16), 5).eval()
    task = al.Task(testbed="toy", seed=0, model=model, calib=[X], input_fn=None, loss=None,
                   evaluate=lambda m: {"score": 0.0})
    return task


@pytest.mark.parametrize("budget", ["2.5bits", "3bits", "4bits"])
def test_the_baselines_keep_the_budget_and_the_bit_choices(small, budget):
    base = ompq_ext.plan(small.model, [X], budget, progress=False)
    limit = base.budgets[0].limit
    plans = [al.params_only(small, base), *al.random_plans(small, base, 5, seed=0)]
    for p in plans:
        assert p.totals["size_bits"] <= limit
        assert set(p.bits.values()) <= set(base.settings["bits"])
    # Random plans differ from each other (they are not one plan repeated).
    assert len({tuple(p.bits.values()) for p in plans[1:]}) > 1


def test_recorded_gives_the_plan_of_its_allocator_and_keeps_its_table(small):
    base = ompq_ext.plan(small.model, [X], "3bits", progress=False)
    recorded = al.Recorded(OutputError())
    p = al.plan_like(small, base, recorded)
    assert p.bits == al.plan_like(small, base, OutputError()).bits
    assert p.settings.method == "output_error"
    values = recorded.scores_.values
    assert set(values) == set(base.layer_names)
    # The table's value of the plan is the best over the table among plans of the same size limit.
    assert al.table_value(p, values) >= al.table_value(al.params_only(small, base), values) - 1e-12


def test_smoke_study_default_not_below_uniform(tmp_path, monkeypatch):
    """The CI version of the study: MNIST-1D seed 0 at 3 bits, MiniLM draw 0 at 4 bits where installed."""
    pytest.importorskip("mnist1d")
    import minilm
    import study

    cache = Path.home() / ".cache" / "ompq_ext" / "quality"
    monkeypatch.setenv("OMPQ_QUALITY_CACHE", str(cache if cache.exists() else tmp_path))
    runs = study.main(["--quick", "--json", str(tmp_path / "study.json")])
    for testbed, budget in (("mnist1d", "3"), ("minilm", "4")):
        score = {r["allocator"]: r["score"] for r in runs if r["testbed"] == testbed and r["budget"] == budget}
        if testbed == "minilm" and not minilm.available():
            assert not score
            continue
        assert score[study.DEFAULT] >= score["uniform"], (testbed, score)
    for r in runs:
        if r["allocator"] != "FP32":
            assert r["avg_bits"] <= float(r["budget"]) + 1e-9
