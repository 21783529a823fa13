"""Activation bits in the plan (issue 13, item 3): at BOPs budgets between all-W4A4 and all-W8A8, the plan
that chooses each layer's input bits from 4, 6 and 8 jointly with its weight bits, against the plans whose
inputs are all at 4, all at 6 or all at 8 bits (weight bits planned, the same method and budget).

    python bench/quality/act_bits.py                 # MNIST-1D x5 seeds, Fashion-MNIST x3, three budgets
    python bench/quality/act_bits.py --quick         # MNIST-1D seed 0, one budget

Every plan is plan()'s default method ("verified") from the cached trained models (train.py) and the
calibration draws of study.py; quantize() with plain rounding and its defaults, activations at each
plan's bits. "best weight-only" is, per seed, the most accurate of the three on the test set (an oracle
the joint plan does not have).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see ptq_table.py

import argparse
import datetime
import shlex
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import data as qdata  # noqa: E402
import train as qtrain  # noqa: E402
from common import machine  # noqa: E402
from ptq_table import code_state  # noqa: E402
from study import pct  # noqa: E402

import ompq_ext  # noqa: E402

CHOICES = (4, 6, 8)


def bops_between(model, calib, frac: float) -> int:
    """frac of the way from the all-W4A4 BOPs to the all-W8A8 BOPs."""
    ends = [ompq_ext.plan(model, calib, f"{b}bits", bits=[b], act_bits=b, method="ompq", progress=False).totals.bops
            for b in (4, 8)]
    return int(ends[0] + frac * (ends[1] - ends[0]))


def run_seed(name, split, seed, fracs, args, log) -> list[dict]:
    model, _ = qtrain.get_model(name, seed, split=split, log=log)
    model.eval()
    x, _ = qdata.calibration(split, args.calib, seed, labels=True)
    calib = qdata.batches(x, 64)
    rows = []
    for frac in fracs:
        budget = f"{bops_between(model, calib, frac)}BOPs"
        for acts in [CHOICES, *CHOICES]:
            t = time.perf_counter()
            p = ompq_ext.plan(model, calib, budget, bits=range(2, 9), act_bits=acts, progress=False)
            seconds = time.perf_counter() - t
            q = ompq_ext.quantize(model, p, calib, progress=False)
            score = qtrain.evaluate(q, split.x_test, split.y_test)
            mix = sorted(p.act_bits.values())
            label = "joint (4, 6, 8)" if isinstance(acts, tuple) else f"all A{acts}"
            rows.append({"testbed": name, "seed": seed, "frac": frac, "plan": label, "score": score, "seconds": seconds,
                         "bops": p.totals.bops, "avg_bits": p.totals.avg_bits, "chosen": p.settings["chosen"],
                         "acts": {a: mix.count(a) for a in CHOICES}})
            log(f"  {name} s{seed} {frac:.2f} {label:<16} {100 * score:6.2f} %  avg W {p.totals.avg_bits:.2f}  "
                f"A {rows[-1]['acts']}  {seconds:5.1f} s  ({p.settings['chosen']})")
    return rows


def table(rows, testbed, fracs) -> list[str]:
    out = [f"| budget (W4A4 → W8A8) | {' | '.join(['joint (4, 6, 8)'] + [f'all A{a}' for a in CHOICES])} | "
           f"joint − best weight-only (per seed) | joint's inputs (A4/A6/A8, all seeds) |", "|---" * 7 + "|"]
    for frac in fracs:
        here = [r for r in rows if r["testbed"] == testbed and r["frac"] == frac]
        by_plan = {label: [r["score"] for r in here if r["plan"] == label]
                   for label in ["joint (4, 6, 8)"] + [f"all A{a}" for a in CHOICES]}
        seeds = sorted({r["seed"] for r in here})
        diffs = [next(r["score"] for r in here if r["seed"] == s and r["plan"] == "joint (4, 6, 8)")
                 - max(r["score"] for r in here if r["seed"] == s and r["plan"] != "joint (4, 6, 8)") for s in seeds]
        wins = (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs))
        acts = [sum(r["acts"][a] for r in here if r["plan"] == "joint (4, 6, 8)") for a in CHOICES]
        out.append(f"| {frac:.2f} | " + " | ".join(pct(v) for v in by_plan.values())
                   + f" | {100 * statistics.mean(diffs):+.2f} ({wins[0]}/{wins[1]}/{wins[2]}) | {acts[0]}/{acts[1]}/{acts[2]} |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist1d-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fashion-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fracs", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="MNIST-1D seed 0 at one budget")
    args = p.parse_args(argv)
    runs = [("mnist1d", [0]), ] if args.quick else [("mnist1d", args.mnist1d_seeds), ("fashion", args.fashion_seeds)]
    fracs = [0.3] if args.quick else args.fracs
    command = "python bench/quality/act_bits.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started, t0, code = datetime.datetime.now(), time.perf_counter(), code_state()
    rows = []
    for name, seeds in runs:
        split = qtrain.TESTBEDS[name].load_data()
        for seed in seeds:
            rows += run_seed(name, split, seed, fracs, args, log)
    lines = [f"Command: `{command}`  ", f"Date: {started.isoformat(timespec='minutes')}; total wall time "
             f"{(time.perf_counter() - t0) / 60:.1f} min  ", f"Code: ompq_ext {ompq_ext.__version__}, {code}  ",
             f"Machine: {machine()}  ",
             f"Plans: plan()'s default method, bits 2-8, {args.calib} calibration inputs; quantize() plain rounding; "
             f"mean plan() time: joint {statistics.mean(r['seconds'] for r in rows if 'joint' in r['plan']):.1f} s, "
             f"weight-only {statistics.mean(r['seconds'] for r in rows if 'joint' not in r['plan']):.1f} s", ""]
    for name, seeds in runs:
        lines += [f"### {name}, seeds {seeds}: test accuracy in % (mean ± sd)", ""] + table(rows, name, fracs) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
