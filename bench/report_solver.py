"""Print docs/BENCHMARKS.md's solver figures: CP-SAT allocation time for L = 16, 64, 256, 1024
layer groups x 7 bit choices (2..8), with one budget (size) and two (size and BOPs), and, on the
same one-budget instances, how often the reference's relaxation + rounding (SLSQP, round to
nearest: ``ompq_ext.solver.solve_relaxed``) breaks the budget or loses objective.

    python bench/report_solver.py [--instances 10]

Instances are random but shaped like real networks: weight counts log-uniform in [1e3, 2.4e6],
MACs per sample = weights x a spatial size in {1, 7², 14², 28², 56²}, OMPQ-like objective weights
(suffix means of exp(-beta * gamma) with gamma uniform in [2, 10], beta = 0.1), an average of 3 to
6 bits per weight and a BOPs limit between the lowest and highest achievable.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ompq_ext.orthogonality import objective_weights
from ompq_ext.solver import GroupSpec, solve, solve_relaxed

from common import machine

BITS = tuple(range(2, 9))
SIZES = (16, 64, 256, 1024)


def instance(num_groups: int, seed: int):
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e3), np.log(2.4e6), num_groups)).astype(np.int64)
    macs = params * rng.choice([1, 49, 196, 784, 3136], num_groups)
    gamma = rng.uniform(2, 10, num_groups)
    weights = objective_weights(-0.1 * (gamma - gamma.min()), "suffix_mean")
    groups = [GroupSpec(f"g{i}", int(p), int(m), float(w), BITS) for i, (p, m, w) in enumerate(zip(params, macs, weights))]
    size = int(rng.uniform(3, 6) * params.sum())
    lo, hi = 8 * 2 * int(macs.sum()), 8 * 8 * int(macs.sum())
    bops = int(rng.uniform(0.3, 0.7) * (hi - lo) + lo)
    return groups, size, bops


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10, help="random instances per size")
    args = parser.parse_args()
    print(f"Command: `python bench/report_solver.py --instances {args.instances}`  \nMachine: {machine()}\n")
    print(f"{args.instances} random instances per row; times are medians (max in brackets) of solve() with its default "
          "settings (three lexicographic stages: objective, then size used, then the tie-break).\n")
    print("| groups × bits | CP-SAT, size budget | CP-SAT, size + BOPs | status | SLSQP + round (reference) "
          "| reference over budget | reference within budget but worse objective | reference equal or better* |")
    print("|---|---|---|---|---|---|---|---|")
    for n in SIZES:
        one, two, rel, statuses = [], [], [], set()
        over = worse = same = 0
        for k in range(args.instances):
            groups, size, bops = instance(n, 1000 * n + k)
            a, s1 = timed(lambda: solve(groups, size_budget_bits=size))
            b, s2 = timed(lambda: solve(groups, size_budget_bits=size, bops_budget=bops))
            r, s3 = timed(lambda: solve_relaxed(groups, size_budget_bits=size, rounding="nearest"))
            one.append(s1)
            two.append(s2)
            rel.append(s3)
            statuses |= {a.status, b.status}
            if r.size_bits > size:
                over += 1
            elif r.objective < a.objective - 1e-12 * max(1.0, abs(a.objective)):
                worse += 1
            else:
                same += 1

        def cell(ts):
            return f"{statistics.median(ts) * 1e3:.0f} ms ({max(ts) * 1e3:.0f})"

        print(f"| {n} × {len(BITS)} | {cell(one)} | {cell(two)} | {', '.join(sorted(statuses))} | {cell(rel)} "
              f"| {over} of {args.instances} | {worse} of {args.instances} | {same} of {args.instances} |")
    print("\n*Within the budget and an objective no lower than the exact solver's (the exact plan is optimal, "
          "so 'better' cannot happen within the budget; equal happens when the relaxation's solution is integral).")


if __name__ == "__main__":
    main()
