"""The embedded default: the bundled MNIST-1D model and data load, and the demo plans within budget."""

import subprocess
import sys

from ompq_ext.demo import BUDGETS, accuracy, load_demo, run


def test_bundled_model_is_the_trained_one():
    model, calib, test_x, test_y = load_demo()
    assert calib.shape == (256, 1, 40) and test_x.shape == (1000, 1, 40) and test_y.shape == (1000,)
    assert accuracy(model, test_x, test_y) > 0.98  # a random model scores about 0.1


def test_demo_plans_every_budget_within_it():
    lines = []
    plans = run(out=lines.append)
    assert len(plans) == len(BUDGETS)
    for budget, plan in zip(BUDGETS, plans):
        assert plan.totals["avg_bits"] <= float(budget.removesuffix("bits"))
        assert plan.solver["status"] == "OPTIMAL"
    assert any("FP32 test accuracy" in line for line in lines)


def test_demo_command():
    out = subprocess.run([sys.executable, "-m", "ompq_ext.cli", "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "budget 3bits" in out.stdout and "stem.0" in out.stdout
