"""Print docs/BENCHMARKS.md's solver figures: allocation time for L = 16, 54, 64, 256, 1024 layer groups x 7 bit
choices (2..8): one budget (size) by the core's exact knapsack and by CP-SAT on the same instances, with OMPQ's
weights and with a value table (what output_error / verified give), whether the two return the same plan; two
budgets (size and BOPs) by default (the knapsack where the size budget's plan meets the BOPs budget, else
CP-SAT) and by CP-SAT alone; and, on the one-budget instances, how often the reference's relaxation +
rounding (SLSQP, round to nearest: ``ompq_ext.solver.solve_relaxed``) breaks the budget or loses objective.

    python bench/report_solver.py [--instances 10]

Instances are random but shaped like real networks: weight counts log-uniform in [1e3, 2.4e6],
MACs per sample = weights x a spatial size in {1, 7², 14², 28², 56²}, OMPQ-like objective weights
(suffix means of exp(-beta * gamma) with gamma uniform in [2, 10], beta = 0.1), an average of 3 to
6 bits per weight and a BOPs limit between the lowest and highest achievable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from ompq_ext.orthogonality import objective_weights
from ompq_ext.solver import GroupSpec, solve, solve_relaxed

from common import machine

BITS = tuple(range(2, 9))
SIZES = (16, 54, 64, 256, 1024)  # 54: ResNet-50's layer groups


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


def value_table(groups, seed: int):
    """A value per group and bit-width shaped like what output_error / verified give the solver (minus a
    quantization error that falls 4x per bit, scaled by the group's size and a random sensitivity)."""
    rng = np.random.default_rng(seed)
    return [{b: -g.params * 2.0 ** (-2 * b) * rng.uniform(0.5, 2) for b in g.bits} for g in groups]


def cell(ts):
    m, top = statistics.median(ts) * 1e3, max(ts) * 1e3
    digits = 2 if top < 10 else 0
    return f"{m:.{digits}f} ms ({top:.{digits}f})"


def plan_rows(repeats: int = 3):
    """plan() on torchvision's ResNet-18 and ResNet-50 (random init, N = 32, 112 px, budget 4 bits per weight) with
    the one-budget solve by the knapsack (the default) and by CP-SAT: the solve stage and the whole plan()."""
    import torch

    import ompq_ext
    from ompq_ext import solver as solver_module

    from common import load_torchvision

    torchvision = load_torchvision()
    x = torch.randn(32, 3, 112, 112)
    rows = []
    default = solver_module.solve.__kwdefaults__["engine"]
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        for method in ("ompq", "verified"):
            timings = {}
            for engine in ("knapsack", "cp-sat"):
                solver_module.solve.__kwdefaults__["engine"] = "auto" if engine == "knapsack" else engine
                try:
                    runs = [ompq_ext.plan(model, [x], "4bits", method=method, progress=False) for _ in range(repeats)]
                finally:
                    solver_module.solve.__kwdefaults__["engine"] = default
                timings[engine] = (statistics.median(r.timing["solve"] for r in runs),
                                   statistics.median(r.timing["total"] for r in runs), runs[-1])
            (sk, tk, pk), (sc, tc, pc) = timings["knapsack"], timings["cp-sat"]
            rows.append(f"| {arch} | {method} | {len(pk.layers)} | {sk * 1e3:.1f} ms | {sc * 1e3:.1f} ms | "
                        f"{tk:.2f} s | {tc:.2f} s | {pk.bits == pc.bits} |")
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10, help="random instances per size")
    parser.add_argument("--plans-only", action="store_true", help="only plan() on ResNet-18/50 by each engine")
    parser.add_argument("--two-budget-tail", type=int, metavar="N",
                        help="only the default engine with two budgets on N instances per size (the worst case)")
    args = parser.parse_args()
    if args.plans_only:
        return print_plans()
    if args.two_budget_tail:
        return print_two_budget_tail(args.two_budget_tail)
    print(f"Command: `python bench/report_solver.py --instances {args.instances}`  \nMachine: {machine()}\n")
    print(f"{args.instances} random instances per row; times are medians (max in brackets) of solve() with its default "
          "settings (three lexicographic stages: objective, then size used, then the tie-break); 'knapsack' is "
          "engine='knapsack' (the default for one budget), 'CP-SAT' engine='cp-sat'.\n")
    engines, reference = [], []
    for n in SIZES:
        t = {key: [] for key in ("k1", "c1", "kt", "ct", "c2", "c2c", "rel")}
        statuses, same_plan, decided = set(), 0, 0
        over = worse = same = 0
        for k in range(args.instances):
            groups, size, bops = instance(n, 1000 * n + k)
            table = value_table(groups, 1000 * n + k)
            runs = {"k1": lambda: solve(groups, size_budget_bits=size, engine="knapsack"),
                    "c1": lambda: solve(groups, size_budget_bits=size, engine="cp-sat"),
                    "kt": lambda: solve(groups, size_budget_bits=size, values=table, engine="knapsack"),
                    "ct": lambda: solve(groups, size_budget_bits=size, values=table, engine="cp-sat"),
                    "c2": lambda: solve(groups, size_budget_bits=size, bops_budget=bops),
                    "c2c": lambda: solve(groups, size_budget_bits=size, bops_budget=bops, engine="cp-sat"),
                    "rel": lambda: solve_relaxed(groups, size_budget_bits=size, rounding="nearest")}
            out = {}
            for key, run in runs.items():
                out[key], took = timed(run)
                t[key].append(took)
            statuses |= {out[key].status for key in ("k1", "c1", "kt", "ct", "c2", "c2c")}
            decided += out["c2"].engine == "knapsack"  # the size budget's plan met the BOPs budget too
            same_plan += out["c2"].bits == out["c2c"].bits
            # the knapsack's plans against CP-SAT's: the same objective, size and bits (when CP-SAT proved all)
            same_plan += sum(out[a].bits == out[b].bits and out[a].objective == out[b].objective
                             for a, b in (("k1", "c1"), ("kt", "ct")))
            r, a = out["rel"], out["k1"]
            if r.size_bits > size:
                over += 1
            elif r.objective < a.objective - 1e-12 * max(1.0, abs(a.objective)):
                worse += 1
            else:
                same += 1
        ratio = statistics.median(t["c1"]) / statistics.median(t["k1"])
        ratio_t = statistics.median(t["ct"]) / statistics.median(t["kt"])
        engines.append(f"| {n} × {len(BITS)} | {cell(t['k1'])} | {cell(t['c1'])} | {ratio:.0f} | {cell(t['kt'])} | "
                       f"{cell(t['ct'])} | {ratio_t:.0f} | {same_plan} of {3 * args.instances} | {cell(t['c2'])} | "
                       f"{decided} of {args.instances} | {cell(t['c2c'])} | {', '.join(sorted(statuses))} |")
        reference.append(f"| {n} × {len(BITS)} | {cell(t['k1'])} | {cell(t['rel'])} | {over} of {args.instances} | "
                         f"{worse} of {args.instances} | {same} of {args.instances} |")
        print(engines[-1], flush=True)
    print("\n| groups × bits | knapsack, size budget | CP-SAT, size budget | CP-SAT / knapsack | knapsack, value table "
          "| CP-SAT, value table | CP-SAT / knapsack | same plan | size + BOPs (default) | of which by the knapsack "
          "| size + BOPs, CP-SAT | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(engines))
    print("\n| groups × bits | exact (knapsack) | SLSQP + round (reference) | reference over budget "
          "| reference within budget but worse objective | reference equal or better* |")
    print("|---|---|---|---|---|---|")
    print("\n".join(reference))
    print_plans()
    print("\n*Within the budget and an objective no lower than the exact solver's (the exact plan is optimal, "
          "so 'better' cannot happen within the budget; equal happens when the relaxation's solution is integral).")


def print_two_budget_tail(count: int):
    print(f"Command: `python bench/report_solver.py --two-budget-tail {count}`  \nMachine: {machine()}\n")
    print(f"solve() with the default engine under a size and a BOPs budget, {count} random instances per size "
          "(the same generator as the main table, seeds 1000 n + k): the tail, not only the median; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (1: the knapsack's two passes take turns "
          "on one thread; else they run on two)\n")
    print("| groups × bits | instances | median | 90th percentile | max | slowest seed | over 1 s | by the knapsack |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (256, 1024):
        times, by_knapsack = [], 0
        for k in range(count):
            groups, size, bops = instance(n, 1000 * n + k)
            out, took = timed(lambda: solve(groups, size_budget_bits=size, bops_budget=bops))
            times.append(took)
            by_knapsack += out.engine == "knapsack"
        order = sorted(times)
        print(f"| {n} × {len(BITS)} | {count} | {statistics.median(times) * 1e3:.1f} ms | "
              f"{order[int(0.9 * (count - 1))] * 1e3:.0f} ms | {order[-1] * 1e3:.0f} ms | "
              f"{1000 * n + times.index(order[-1])} | {sum(t > 1 for t in times)} | {by_knapsack} of {count} |",
              flush=True)


def print_plans():
    print("\nplan() on torchvision ResNets (random init, N = 32, 112 px, budget 4 bits per weight), medians of 3: the "
          "final solve stage and the whole call (`verified` also solves one plan per candidate while it scores, which "
          "counts in the whole call), with the one-budget solves by the knapsack (default) and by CP-SAT\n")
    print("| model | method | layers | final solve, knapsack | final solve, CP-SAT | plan(), knapsack | plan(), CP-SAT "
          "| same bits |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(plan_rows()))


if __name__ == "__main__":
    main()
