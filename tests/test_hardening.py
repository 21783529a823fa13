"""The nine unclear errors of the hardening issue, each now a named OmpqError (or a documented behaviour)."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ompq_ext
from ompq_ext import OmpqError, OmpqTypeError, OmpqValueError, _core, cli
from ompq_ext.demo import load_demo
from ompq_ext.quant.ops import fake_quantize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    model, calib, _, _ = load_demo()
    return model, calib[:64]


@pytest.mark.parametrize("budget", [10**400, 10**5000, "1e400MiB", 1e300, "3e18GBOPs"], ids=["1e400", "1e5000", "MiB", "float", "GBOPs"])
def test_1_budgets_too_large_to_represent_are_named(demo, budget):
    model, calib = demo
    with pytest.raises(OmpqValueError, match="budget .*too large to represent"):
        ompq_ext.plan(model, [calib], budget, progress=False)


def test_1_the_largest_representable_budget_still_plans(demo):
    model, calib = demo
    plan = ompq_ext.plan(model, [calib], 2**59, method="ompq", progress=False)
    assert max(plan.bits.values()) == 8  # far above the model: the widest bits


@pytest.mark.parametrize("axis", [0.0, "0", True])
def test_2_fake_quantize_names_a_bad_axis(axis):
    with pytest.raises(OmpqTypeError, match="axis must be an integer"):
        fake_quantize(torch.randn(4, 3), torch.ones(4), axis=axis)


def test_2_an_integer_scalar_axis_still_works():
    x = torch.randn(4, 3)
    assert torch.equal(fake_quantize(x, torch.ones(4), axis=np.int64(0)), fake_quantize(x, torch.ones(4), axis=0))


FACTORY = """
def boom():
    raise RuntimeError("no weights here")

def data_boom():
    raise KeyError("split")
"""


def test_3_a_raising_factory_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "hardening_fac.py").write_text(FACTORY)
    torch.save(torch.randn(8, 3), tmp_path / "x.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["plan", "hardening_fac:boom", "--data", str(tmp_path / "x.pt"), "--budget", "4bits"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "ompq-ext: error: the model factory 'hardening_fac:boom' raised RuntimeError: no weights here"
    assert cli.main(["plan", "hardening_fac:boom", "--data", "hardening_fac:data_boom", "--budget", "4bits"]) == 2
    assert "raised" in capsys.readouterr().err
    for where in (0, -1):  # --traceback before or after the command: the whole story
        args = ["plan", "hardening_fac:boom", "--data", str(tmp_path / "x.pt"), "--budget", "4bits"]
        args.insert(where if where == 0 else len(args), "--traceback")
        with pytest.raises(OmpqValueError) as raised:
            cli.main(args)
        assert isinstance(raised.value.__cause__, RuntimeError)
    monkeypatch.setenv("OMPQ_TRACEBACK", "0")  # 0 means off
    assert cli.main(["plan", "hardening_fac:boom", "--data", str(tmp_path / "x.pt"), "--budget", "4bits"]) == 2


def test_4_a_model_or_samples_on_the_meta_device_are_named():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(OmpqValueError, match="'0.weight' is on the meta device"):
        ompq_ext.plan(model.to("meta"), [torch.randn(8, 3)], "4bits", method="ompq", progress=False)
    with pytest.raises(OmpqValueError, match="samples are on the meta device"):
        ompq_ext.plan(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), [torch.randn(8, 3, device="meta")],
                      "4bits", method="ompq", progress=False)


needs_cuda_build = pytest.mark.skipif(not getattr(_core, "cuda_built", False), reason="core built without CUDA")


@needs_cuda_build
@pytest.mark.parametrize("call", [
    lambda: _core.gram_workspace_bytes(2**62, 2**62),
    lambda: _core.gram_workspace_bytes(2**40, 7),
    lambda: _core.orm_workspace_bytes(2**40, 2**40),
    lambda: _core.orm_workspace_bytes(2**62, 1),
    lambda: _core.fake_quant_backward_workspace_bytes(2**62, 2**62, 4),
    lambda: _core.fake_quant_backward_workspace_bytes(1, 2**32, 2**32),
])
def test_5_workspace_sizes_refuse_to_overflow(call):
    with pytest.raises(OmpqValueError, match="overflows|too large"):
        call()


@needs_cuda_build
def test_5_workspace_sizes_are_the_products_where_they_fit():
    assert _core.orm_workspace_bytes(3, 4) == (3 * 16 + 3 * 8 + 3 + 9) * 8
    assert _core.gram_workspace_bytes(64, 1000) > 0


def test_6_orm_of_non_finite_grams_is_refused_by_name():
    grams = np.random.default_rng(0).random((3, 4, 4))
    grams = grams @ grams.transpose(0, 2, 1)
    for bad, what in ((np.nan, "a NaN"), (np.inf, "an infinite")):
        g = grams.copy()
        g[1, 2, 3] = bad
        with pytest.raises(OmpqValueError, match=f"layer 1 holds {what} entry at \\(2, 3\\)"):
            _core.orm_matrix(g)
    with pytest.raises(OmpqValueError, match="NaN"):
        _core.orm_matrix(np.full((3, 4, 4), np.nan))
    constant = grams.copy()
    constant[0] = 1.0  # equal features for every sample: the documented NaN row, still accepted
    assert np.isnan(_core.orm_matrix(constant)[0]).all()


def test_7_nan_stays_nan_and_everything_else_is_torchs_bit_for_bit():
    x = torch.tensor([float("nan"), 1.0, -0.0, float("inf"), float("-inf"), 0.37, -5.0])
    ours = fake_quantize(x, torch.tensor([0.1]), bits=4)
    theirs = torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -8, 7)
    assert torch.isnan(ours[0]) and not torch.isnan(theirs[0])  # the one documented difference
    assert torch.equal(ours[1:], theirs[1:])
    claim = [line for line in (ROOT / "README.md").read_text().splitlines() if "bit-exact" in line]
    assert claim and any("NaN" in line for line in claim), "the README's bit-exactness claim must state the NaN case"


def test_8_calibration_that_is_all_nan_is_refused_and_partly_nan_warned(demo):
    model, calib = demo
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", progress=False)
    with pytest.raises(OmpqValueError, match="input quantizer of layer 'stem.0'.*NaN or infinite"):
        ompq_ext.quantize(model, plan, calib=[torch.full_like(calib, float("nan"))], progress=False)
    some = calib.clone()
    some[0, 0, 0] = float("inf")
    with pytest.warns(UserWarning, match="NaN or infinite inputs.*stem.0 \\(1\\)"):
        qmodel = ompq_ext.quantize(model, plan, calib=[some], progress=False)
    scales = [m.scale.item() for m in qmodel.modules() if type(m).__name__ == "ActQuantizer"]
    assert all(np.isfinite(s) and s > 0 for s in scales)


MODEL = """
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(3, 8), nn.Linear(8, 2), nn.Linear(8, 8)
    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

def make():
    torch.manual_seed(0)
    return M()
"""


def test_9_quiet_means_quiet_and_no_bar_fragments(tmp_path, monkeypatch, capsys):
    (tmp_path / "hardening_quiet.py").write_text(MODEL)
    torch.save(torch.randn(16, 3), tmp_path / "x.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["plan", "hardening_quiet:make", "--data", str(tmp_path / "x.pt"), "--budget", "4bits", "--method", "ompq"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(args + ["--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == "" and caught == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(args) == 0
    assert any("never ran" in str(w.message) for w in caught)
    assert capsys.readouterr().err == ""  # not a terminal: no bar at all
    # the console script: the warning as one line of its own, no bar fragment before it
    done = subprocess.run(["ompq-ext", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ompq-ext: warning: ") and "never ran" in lines[0], done.stderr
    assert not re.search(r"\d+/\d+", done.stderr)


def test_warnings_point_at_the_callers_line(demo):
    space = {}
    exec(MODEL, space)
    model = space["make"]()
    with pytest.warns(UserWarning, match="never ran") as caught:
        ompq_ext.plan(model, [torch.randn(16, 3)], "4bits", method="ompq", progress=False)
    assert caught[0].filename == __file__


def test_all_errors_here_are_ompq_errors():
    assert issubclass(OmpqTypeError, OmpqError) and issubclass(OmpqValueError, OmpqError)
