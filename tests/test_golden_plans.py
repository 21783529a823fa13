"""OMPQ's plans of the bundled MNIST-1D model, over the paper's and the library's settings, equal those
the code gave before plan() became a pipeline of stages (tests/data/golden_plans.json, written by
tests/data/make_golden_plans.py at commit cb144fb): same bits, same orthogonality, same totals."""

import json
import runpy
from pathlib import Path

import pytest

from ompq_ext import plan
from ompq_ext.demo import load_demo

DATA = Path(__file__).resolve().parent / "data"
MAKE = runpy.run_path(str(DATA / "make_golden_plans.py"), run_name="golden")
GOLDEN = json.loads((DATA / "golden_plans.json").read_text())


@pytest.fixture(scope="module")
def demo():
    model, calib, _, _ = load_demo()
    return model, calib


@pytest.mark.parametrize("case", list(MAKE["CASES"]))
def test_plan_equals_the_golden_plan(demo, case):
    model, calib = demo
    budget, options = MAKE["CASES"][case]
    options = dict(options)
    if "latency" in options:
        options.update(latency_table=MAKE["latency_table"](model), latency_budget=options.pop("latency"))
    # OMPQ's plans, as written: the file's sizes count the weights alone (the paper's accounting, and the
    # library's before the quantizers' scales were counted), which scale_bits=0 keeps.
    p = plan(model, [calib], budget, method="ompq", scale_bits=0, progress=False, **options)
    want = GOLDEN[case]
    assert p.bits == want["bits"]
    assert p.totals.size_bits == want["size_bits"] and p.totals.bops == want["bops"]
    # The features come from torch's float32 convolutions, whose rounding depends on the CPU's kernels
    # (an AVX-512 EPYC moved gamma by up to 4e-8 and the objective by 1.5e-9 relative from the machine
    # that wrote the file): the bits and totals are exact, the orthogonality holds to float32's accuracy.
    assert p.solver.objective == pytest.approx(want["objective"], rel=1e-6)
    for x in p.layers:
        assert x.gamma == pytest.approx(want["gamma"][x.name], rel=1e-6, abs=1e-12), x.name
