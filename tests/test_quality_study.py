"""The allocation-quality study's allocators (bench/quality/allocators.py) and its CI smoke test:
the reduced study (MNIST-1D seed 0, 3 bits) must show OMPQ at least as accurate as uniform."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))
sys.path.insert(0, str(QUALITY.parent))

import allocators as al  # noqa: E402

import ompq_ext  # noqa: E402
from ompq_ext.models import mlp  # noqa: E402

torch.manual_seed(0)
X, Y = torch.randn(64, 12), torch.randint(0, 5, (64,))


def ce(out):
    return nn.functional.cross_entropy(out, Y)


def kl(out, ref):
    return float(nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="batchmean"))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = mlp(12, (24, 16), 5).eval()
    task = al.Task(testbed="toy", seed=0, model=model, calib=[X], input_fn=None, loss=lambda m: ce(m(X)),
                   outputs=lambda m: m(X).detach(), divergence=kl, evaluate=lambda m: {"score": 0.0})
    return task, ompq_ext.plan(model, [X], "3bits", progress=False)


def test_hutchinson_matches_the_exact_hessian_trace(small):
    task, base = small
    est = al.hutchinson_traces(task, base.layer_names, probes=3000, seed=1)
    for name in base.layer_names:
        w = task.model.get_submodule(name).weight.detach()

        def loss_of(flat, name=name, shape=w.shape):
            return ce(torch.func.functional_call(task.model, {f"{name}.weight": flat.reshape(shape)}, (X,)))

        exact = float(torch.diagonal(torch.autograd.functional.hessian(loss_of, w.reshape(-1).clone())).sum())
        assert exact > 0
        assert est[name] == pytest.approx(exact, rel=0.1), name


def test_quantized_weights_follow_the_recipe_and_leave_the_model_alone(small):
    task, base = small
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    qw = al.QuantizedWeights(task.model, base.layer_names)
    reference = task.outputs(task.model)
    table = al.kl_table(task, base.layer_names, [2, 3, 4], qw, reference)
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name in base.layer_names:
        errors = [qw.error(name, b) for b in (2, 3, 4)]
        assert errors[0] > errors[1] > errors[2] > 0  # more bits, less perturbation
        # The weights quantize() would use, bit for bit.
        plan = ompq_ext.plan(task.model, [X], "3bits", bits=[3], progress=False)
        q = ompq_ext.quantize(task.model, plan, act_bits=0, progress=False)
        qlayer = q.get_submodule(name)
        assert torch.equal(qlayer.weight_quantizer(qlayer.layer.weight), qw(name, 3))
        assert table[name][2] >= 0 and table[name][4] >= 0


@pytest.mark.parametrize("budget", ["2.5bits", "3bits", "4bits"])
def test_every_allocator_keeps_the_budget(small, budget):
    task, _ = small
    base = ompq_ext.plan(task.model, [X], budget, progress=False)
    limit = base.budgets[0].limit
    qw = al.QuantizedWeights(task.model, base.layer_names)
    traces = al.hutchinson_traces(task, base.layer_names, probes=8)
    table = al.kl_table(task, base.layer_names, base.settings["bits"], qw, task.outputs(task.model))
    plans = [al.params_only(task, base), al.hessian_plan(task, base, traces, qw),
             al.greedy(task, base, table), al.kl_plan(task, base, table),
             *al.random_plans(task, base, 5, seed=0)]
    for p in plans:
        assert p.totals["size_bits"] <= limit
        assert set(p.bits.values()) <= set(base.settings["bits"])
    # The exact solver never does worse than the greedy walk on the table it minimises.
    cost = lambda p: sum(table[n][b] for n, b in p.bits.items())  # noqa: E731
    assert cost(plans[3]) <= cost(plans[2]) + 1e-12
    # Random plans differ from each other (they are not one plan repeated).
    assert len({tuple(p.bits.values()) for p in plans[4:]}) > 1


def test_greedy_lowers_the_least_sensitive_layer_first(small):
    task, base = small
    names = base.layer_names
    # A table where one layer is very sensitive: greedy must keep it at the top bits.
    table = {n: {b: (100.0 if n == names[0] else 1.0) / 2**b for b in base.settings["bits"]} for n in names}
    p = al.greedy(task, base, table)
    assert p.bits[names[0]] == max(base.settings["bits"])


def test_smoke_study_ompq_not_below_uniform_at_3_bits(tmp_path, monkeypatch):
    """The CI version of the study (issue 4): MNIST-1D seed 0, 3 bits, plain rounding."""
    pytest.importorskip("mnist1d")
    import study

    cache = Path.home() / ".cache" / "ompq_ext" / "quality"
    monkeypatch.setenv("OMPQ_QUALITY_CACHE", str(cache if cache.exists() else tmp_path))
    runs = study.main(["--quick", "--json", str(tmp_path / "study.json")])
    score = {r["allocator"]: r["score"] for r in runs if r["budget"] == "3" and r["method"] == "rtn"}
    assert score["OMPQ default"] >= score["uniform"], score
    for r in runs:
        if r["budget"] == "3":
            assert r["avg_bits"] <= 3.0
