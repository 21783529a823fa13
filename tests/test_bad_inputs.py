"""docs/BAD_INPUTS.md, row by row: each bad input gets the OmpqError the table names, with that message. All rows
run in one child process (a crash of the interpreter fails the test and names the row it was on), which also
checks that the model was never changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| `(.+)` \| (\w+) \| `(.+)` \|$")

RUNNER = r'''
import json, pathlib, sys, tempfile, warnings
warnings.simplefilter("ignore")
import numpy as np, torch
from torch import nn
import ompq_ext
from ompq_ext import Plan, _core, export, plan, plots, quantize, sweep
from ompq_ext.demo import load_demo
from ompq_ext.quant.ops import fake_quantize

model, signals, _, _ = load_demo()
calib = [signals[:64]]
meta_model = load_demo()[0].to("meta")
other_model = nn.Sequential(nn.Linear(3, 3))
good_plan = plan(model, calib, "4bits", num_samples=32, progress=False)
qmodel = quantize(model, good_plan, calib, progress=False)
tmp = pathlib.Path(tempfile.mkdtemp())
junk_json = tmp / "junk.json"
junk_json.write_text("{}")
packed_path = export.save_packed(qmodel, tmp / "ok.safetensors")
x, s, x3 = torch.randn(4, 3), torch.tensor([0.1]), signals[:4]
before = {k: v.clone() for k, v in model.state_dict().items()}
for number, code in json.load(open(sys.argv[1])):
    print(json.dumps({"start": number}), flush=True)
    try:
        eval(code)
        result = {"row": number, "error": None, "message": ""}
    except Exception as e:
        result = {"row": number, "error": type(e).__name__, "message": str(e),
                  "ompq": isinstance(e, ompq_ext.OmpqError)}
    print(json.dumps(result), flush=True)
untouched = all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not model.training
print(json.dumps({"untouched": untouched}), flush=True)
'''


def rows():
    out = []
    for line in (ROOT / "docs" / "BAD_INPUTS.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            out.append((int(m.group(1)), m.group(3), m.group(4), m.group(5)))
    return out


def test_the_table_has_at_least_40_rows_numbered_in_order():
    numbers = [r[0] for r in rows()]
    assert len(numbers) >= 40 and numbers == list(range(1, len(numbers) + 1))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "cases.json").write_text(json.dumps([(n, code) for n, code, _, _ in rows()]))
    (tmp / "runner.py").write_text(RUNNER)
    done = subprocess.run([sys.executable, str(tmp / "runner.py"), str(tmp / "cases.json")], capture_output=True,
                          text=True, timeout=900, cwd=tmp)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    assert done.returncode == 0, (f"the child process died (status {done.returncode}) on row "
                                  f"{started[-1] if started else '?'}: {done.stderr[-2000:]}")
    assert lines[-1] == {"untouched": True}, "a bad input changed the model"
    return {x["row"]: x for x in lines if "row" in x}


@pytest.mark.parametrize("number, code, error, fragment", rows(), ids=[f"row{r[0]}" for r in rows()])
def test_row(results, number, code, error, fragment):
    got = results[number]
    if code.startswith("_core.") and "workspace" in code:
        from ompq_ext import _core

        if not getattr(_core, "cuda_built", False):
            pytest.skip("the CUDA entry points are not built")
    assert got["error"] == error, f"{code}: {got['error']}: {got['message']}"
    assert got["ompq"], f"{code} raised {error}, which is not an OmpqError"
    assert fragment in got["message"], f"{code}: {got['message']!r}"
