"""sweep(): plans at several budgets from one feature pass, uniform references, measured metrics, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ompq_ext
from ompq_ext import OmpqTypeError, OmpqValueError, cli
from ompq_ext.demo import load_demo
from ompq_ext.sweep import sweep

BUDGETS = ["2.5bits", "3bits", "4bits", "6bits"]


@pytest.fixture(scope="module")
def demo():
    model, calib, test_x, test_y = load_demo()
    return model, calib[:64], test_x[:256], test_y[:256]


def _forward_counter(model):
    calls = []
    handle = model.register_forward_hook(lambda m, a, out: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("method", ["ompq", "verified"])
def test_each_plan_is_what_plan_gives_for_its_budget(demo, method):
    model, calib, _, _ = demo
    result = sweep(model, [calib], BUDGETS, method=method, num_samples=32, progress=False)
    assert [p.label for p in result.points] == BUDGETS
    for budget, point in zip(BUDGETS, result.points):
        alone = ompq_ext.plan(model, [calib], budget, method=method, num_samples=32, progress=False)
        assert point.plan.bits == alone.bits
        assert point.plan.totals.size_bits == alone.totals.size_bits
        assert point.plan.solver.objective == pytest.approx(alone.solver.objective, rel=1e-12, abs=1e-12)
        assert point.plan.settings.bits == alone.settings.bits


def test_the_feature_pass_runs_once(demo):
    model, calib, _, _ = demo
    calls, handle = _forward_counter(model)
    try:
        sweep(model, [calib], BUDGETS, method="ompq", num_samples=32, progress=False, uniform=False)
        swept = len(calls)
        calls.clear()
        for b in BUDGETS:
            ompq_ext.plan(model, [calib], b, method="ompq", num_samples=32, progress=False)
    finally:
        handle.remove()
    assert swept == 1 and len(calls) == len(BUDGETS)


def test_uniform_references_cost_what_a_uniform_plan_costs(demo):
    model, calib, _, _ = demo
    result = sweep(model, [calib], ["3bits", "4bits"], method="ompq", num_samples=32, progress=False)
    assert result.comparable  # OMPQ's scores do not depend on the budget
    widths = sorted({b for p in result.points for b in p.plan.settings.bits})
    assert [r.label for r in result.references] == [f"uniform {b} bits" for b in widths]
    for ref, b in zip(result.references, widths):
        uniform = ompq_ext.plan(model, [calib], f"{b}bits", method="ompq", bits=[b], num_samples=32, progress=False)
        assert set(ref.plan.bits.values()) == {b}
        assert ref.plan.totals.size_bits == uniform.totals.size_bits
        assert ref.plan.totals.bops == uniform.totals.bops
        assert ref.plan.totals.avg_bits == pytest.approx(uniform.totals.avg_bits, rel=1e-12)
        assert ref.objective == pytest.approx(uniform.solver.objective, rel=1e-9)
    # the exact plan at a budget is never worse than the uniform plan of the same or smaller size
    for p in result.points:
        for ref in result.references:
            if ref.plan.totals.size_bits <= p.plan.totals.size_bits:
                assert p.objective >= ref.objective - 1e-9 * abs(ref.objective)


def test_evaluate_measures_every_plan_and_reference_and_leaves_the_model_alone(demo):
    model, calib, test_x, test_y = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def accuracy(qmodel):
        seen.append(qmodel)
        with torch.no_grad():
            return (qmodel(test_x).argmax(1) == test_y).float().mean()  # a tensor: taken as a number

    result = sweep(model, [calib], ["2.5bits", "4bits"], method="ompq", num_samples=32, evaluate=accuracy,
                   metric_name="accuracy", progress=False)
    everyone = result.points + result.references
    assert len(seen) == len(everyone) and all(m is not model for m in seen)
    assert all(isinstance(p.metric, float) and 0 <= p.metric <= 1 for p in everyone)
    assert result.metric_name == "accuracy"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # each metric is that plan's model's: requantize one and measure it again
    again = accuracy(ompq_ext.quantize(model, result.points[0].plan, calib=[calib], progress=False))
    assert result.points[0].metric == pytest.approx(float(again))
    table = result.table()
    assert "accuracy" in table and "uniform 2 bits" in table and "2.5bits" in table


def test_front_keeps_only_points_nothing_smaller_beats():
    from ompq_ext.sweep import Sweep, SweepPoint

    class P:  # the fields front() reads
        def __init__(self, mib, metric):
            self.size_mib, self.metric, self.objective = mib, metric, None

    a, b, c, d = P(1.0, 0.50), P(2.0, 0.40), P(3.0, 0.70), P(3.0, 0.70)
    s = Sweep.__new__(Sweep)
    s.points, s.references, s.metric_name, s.maximize, s.comparable = [a, b, c], [d], "acc", True, True
    assert s.front() == [a, c, d]  # b: larger than a and worse; c and d tie
    s.maximize = False  # a loss: smaller is better
    assert s.front() == [a, b]
    assert SweepPoint.__name__ == "SweepPoint"  # the public names exist


def test_the_default_method_is_not_comparable_across_budgets_and_says_so(demo):
    model, calib, _, _ = demo
    result = sweep(model, [calib], ["3bits", "4bits"], num_samples=32, progress=False)
    assert not result.comparable
    assert all(r.objective is None for r in result.references)
    assert "do not compare across rows" in result.table() and "objective" not in result.table().splitlines()[0]
    assert result.front() == [] and "no front" in result.table() and "*" not in result.table()


def test_bad_arguments_are_named(demo):
    model, calib, _, _ = demo
    with pytest.raises(OmpqTypeError, match="budgets must be a non-empty list"):
        sweep(model, [calib], "3bits")
    with pytest.raises(OmpqTypeError, match="budgets must be a non-empty list"):
        sweep(model, [calib], [])
    with pytest.raises(OmpqTypeError, match="'bogus'"):
        sweep(model, [calib], ["3bits"], bogus=1)
    with pytest.raises(OmpqTypeError, match="evaluate must be a function"):
        sweep(model, [calib], ["3bits"], evaluate=3)
    with pytest.raises(OmpqValueError, match="budget"):
        sweep(model, [calib], ["3bits", "lots"], method="ompq", progress=False)
    with pytest.raises(OmpqTypeError, match="evaluate must return a number.*uniform|evaluate must return a number"):
        sweep(model, [calib], ["3bits"], method="ompq", num_samples=32, evaluate=lambda q: "good", progress=False)
    with pytest.raises(OmpqValueError, match="finite"):
        sweep(model, [calib], ["3bits"], method="ompq", num_samples=32, evaluate=lambda q: math.nan, progress=False)


def test_sweep_command(tmp_path, demo, capsys, monkeypatch):
    model, calib, test_x, test_y = demo
    torch.save(calib, tmp_path / "calib.pt")
    (tmp_path / "sweep_demo_mod.py").write_text(
        "import torch\nfrom ompq_ext.demo import load_demo\n"
        "def model():\n    return load_demo()[0]\n"
        "def accuracy(q):\n    m, c, x, y = load_demo()\n"
        "    with torch.no_grad():\n        return (q(x[:256]).argmax(1) == y[:256]).float().mean().item()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "sweep.json"
    code = cli.main(["sweep", "sweep_demo_mod:model", "--data", str(tmp_path / "calib.pt"), "--budgets",
                     "2.5bits,4bits", "--method", "ompq", "--num-samples", "32", "--evaluate",
                     "sweep_demo_mod:accuracy", "--metric", "accuracy", "-o", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "uniform 3 bits" in printed
    data = json.loads(out.read_text())
    assert [p["label"] for p in data["points"]] == ["2.5bits", "4bits"]
    assert all(p["metric"] is not None for p in data["points"] + data["references"])
    assert "sweep" in cli._parser().format_help()


def test_with_activation_bit_choices_objectives_do_not_compare(demo):
    model, calib, _, _ = demo
    result = sweep(model, [calib], ["3bits", "4bits"], method="ompq", act_bits=(4, 8), num_samples=32,
                   progress=False)
    assert not result.comparable and all(r.objective is None for r in result.references)
