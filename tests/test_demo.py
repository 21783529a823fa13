"""The embedded default: the bundled MNIST-1D model and data load, and the demo plans,
quantizes and compares at equal size."""

import subprocess
import sys

from ompq_ext.demo import BUDGET_BITS, accuracy, load_demo, run


def test_bundled_model_is_the_trained_one():
    model, calib, test_x, test_y = load_demo()
    assert calib.shape == (256, 1, 40) and test_x.shape == (1000, 1, 40) and test_y.shape == (1000,)
    assert accuracy(model, test_x, test_y) > 0.98  # a random model scores about 0.1


def test_demo_compares_uniform_and_ompq_at_equal_size(tmp_path):
    lines = []
    rows = run(out=lines.append, plot=str(tmp_path / "bits.png"))
    assert [r[0] for r in rows] == [f"{b}bits" for b in BUDGET_BITS]
    for (budget, uniform, ompq, acc_u, acc_o), b in zip(rows, BUDGET_BITS):
        assert set(uniform.bits.values()) == {b}
        assert ompq.totals["size_bits"] <= uniform.totals["size_bits"]  # never more than uniform's size
        assert ompq.solver["status"] == "OPTIMAL"
        assert 0.0 <= acc_u <= 1.0 and 0.0 <= acc_o <= 1.0
        assert ompq.settings.method == "verified"  # plan()'s default
        assert acc_o >= acc_u, budget  # the default's plan is never below uniform precision here
    assert acc_u > 0.9  # uniform 4-bit weights keep the model working: the quantized path is real
    assert any("FP32" in line for line in lines)


def test_demo_command():
    out = subprocess.run([sys.executable, "-m", "ompq_ext.cli", "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "uniform" in out.stdout and "verified" in out.stdout and "4bits" in out.stdout
