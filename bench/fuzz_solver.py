"""Random allocation problems (2-60 groups, random bit sets, OMPQ-like weights or value tables, a size budget and
often a BOPs budget) solved by the default engine and by CP-SAT alone, for a given time; prints every difference
in objective, size used or bits, with the engine used and CP-SAT's solve time (a difference where CP-SAT ran into
its time limit is CP-SAT's plan being worse, not a bug).

    python bench/fuzz_solver.py [--seconds 300] [--seed 12345]
"""

import argparse
import time

import numpy as np

from ompq_ext.solver import GroupSpec, solve

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=300)
parser.add_argument("--seed", type=int, default=12345)
args = parser.parse_args()
rng = np.random.default_rng(args.seed)
t_end = time.time() + args.seconds
n = bad = 0
while time.time() < t_end:
    G = int(rng.integers(2, 60))
    bits = tuple(sorted(set(rng.choice(range(1, 9), size=int(rng.integers(1, 6)), replace=False).tolist())))
    params = np.exp(rng.uniform(np.log(10), np.log(1e6), G)).astype(int)
    macs = params * rng.choice([1, 49, 196, 784], G)
    w = rng.uniform(0, 1, G) ** 3
    groups = [GroupSpec(f"g{i}", int(p), int(m), float(x), bits, act_bits=int(rng.choice([4, 8])))
              for i, (p, m, x) in enumerate(zip(params, macs, w))]
    values = None
    if rng.random() < 0.5:
        values = [{b: -float(p) * 2.0 ** (-2 * b) * rng.uniform(0.5, 2) for b in bits} for p in params]
    lo, hi = sum(g.params * bits[0] for g in groups), sum(g.params * bits[-1] for g in groups)
    size = int(lo + rng.uniform(0, 1) * (hi - lo))
    kw = dict(size_budget_bits=size)
    if rng.random() < 0.6:
        blo = sum(g.macs * g.act_bits * bits[0] for g in groups)
        bhi = sum(g.macs * g.act_bits * bits[-1] for g in groups)
        kw["bops_budget"] = int(blo + rng.uniform(0, 1) * (bhi - blo))
    try:
        b = solve(groups, values=values, engine="cp-sat", time_limit_s=20, **kw)
    except Exception as e:
        try:
            solve(groups, values=values, **kw)
            print("the default solved what CP-SAT did not:", type(e).__name__)
            bad += 1
        except Exception:
            pass
        continue
    a = solve(groups, values=values, **kw)
    n += 1
    if a.objective != b.objective or a.size_bits != b.size_bits or a.bits != b.bits:
        print(f"difference: {G} groups, bits {bits}, {'two budgets' if 'bops_budget' in kw else 'one budget'}, default "
              f"engine {a.engine}: objective {a.objective - b.objective:+.6g}, size {a.size_bits - b.size_bits:+d} bits, "
              f"CP-SAT {b.solve_time_s:.1f} s")
        bad += 1
print("instances", n, "differences", bad)
