"""plan() under torch.distributed with 2 local gloo processes: both ranks get the plan a single process gets on
their samples joined (OMPQ: the Grams are summed over the ranks; other methods plan on the gathered samples)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ompq_ext
from ompq_ext.demo import load_demo

WORKER = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    import ompq_ext
    from ompq_ext.demo import load_demo

    method, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model, calib, _, _ = load_demo()
    part = calib[rank * 40: rank * 40 + 40 - 8 * rank]  # 40 and 32 samples: uneven parts
    if method == "few":  # rank 1 has too few samples: both ranks must raise, naming rank 1
        try:
            ompq_ext.plan(model, [part[:2] if rank else part], "3bits", method="ompq", progress=False,
                          process_group=dist.group.WORLD)
            result = {"error": None}
        except ompq_ext.OmpqError as e:
            result = {"error": str(e)}
        alone = ompq_ext.plan(model, [part], "3bits", method="ompq", num_samples=40, progress=False)  # no group
        result["alone"] = alone.settings.num_samples
        json.dump(result, open(f"{out}.{rank}.json", "w"))
        dist.barrier()  # both ranks done before the group goes (else a racing teardown can abort)
        dist.destroy_process_group()
        sys.exit(0)
    plan = ompq_ext.plan(model, [part], "3bits", method=method, num_samples=40, progress=False,
                         process_group=dist.group.WORLD)
    json.dump({"bits": plan.bits, "objective": plan.solver.objective, "samples": plan.settings.num_samples,
               "orm": None if plan.orm is None else plan.orm.tolist()}, open(f"{out}.{rank}.json", "w"))
    dist.barrier()
    dist.destroy_process_group()
""")


def _free_port() -> int:
    """A port no one listens on now (each run its own: a port just released may still be in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(tmp_path, method):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), str(script), method,
                           str(tmp_path / method)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"{method}.{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("method", ["ompq", "verified"])
def test_two_gloo_ranks_get_the_single_process_plan(tmp_path, method):
    ranks = _run(tmp_path, method)
    model, calib, _, _ = load_demo()
    joined = torch.cat([calib[:40], calib[40:72]])
    alone = ompq_ext.plan(model, [joined], "3bits", method=method, num_samples=72, progress=False)
    for r in ranks:
        assert r["samples"] == 72
        assert r["bits"] == alone.bits
        assert r["objective"] == pytest.approx(alone.solver.objective, rel=1e-9)
    if method == "ompq":
        assert ranks[0]["orm"] == ranks[1]["orm"]  # the very same numbers on both ranks
        # The forward on 40 and on 32 samples rounds its float32 convolutions differently from one on 72
        # (measured: 1.3e-8 at most); the Gram arithmetic itself is float64.
        np.testing.assert_allclose(np.array(ranks[0]["orm"]), alone.orm, rtol=0, atol=1e-6)


def test_a_failing_rank_makes_every_rank_raise_and_no_group_plans_alone(tmp_path):
    ranks = _run(tmp_path, "few")
    assert "plan() failed on rank 1" in ranks[0]["error"] and "only 2 samples" in ranks[0]["error"]
    assert "only 2 samples" in ranks[1]["error"]  # the failing rank raises its own error
    assert [r["alone"] for r in ranks] == [40, 32]  # without process_group each rank plans on its own part


def test_batch_statistics_are_refused_with_a_group_and_a_group_needs_torch_distributed():
    model, calib, _, _ = load_demo()
    with pytest.raises(ompq_ext.OmpqValueError, match="bn_mode='batch' with a process_group"):
        ompq_ext.plan(model, [calib], "3bits", method="ompq", bn_mode="batch", process_group=object())
    with pytest.raises(ompq_ext.OmpqValueError, match="torch.distributed is not initialised"):
        ompq_ext.plan(model, [calib], "3bits", method="ompq", process_group=object())
