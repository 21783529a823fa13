"""CP-SAT allocation time for 16..1024 layer groups x 7 bit choices, one budget and two, with
the reference's SLSQP relaxation + rounding on the same instances in the same group.
`python bench/report_solver.py` prints the table for docs/BENCHMARKS.md, with how often the
reference's rounding breaks the budget or loses objective.

    pytest bench/bench_solver.py --benchmark-only --benchmark-group-by=group
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_solver import SIZES, instance  # noqa: E402

from ompq_ext.solver import solve, solve_relaxed  # noqa: E402


@pytest.mark.parametrize("num_groups", SIZES)
@pytest.mark.parametrize("how", ["cp-sat size", "cp-sat size+bops", "slsqp+round size"])
def test_allocation(benchmark, num_groups, how):
    groups, size, bops = instance(num_groups, seed=num_groups)
    benchmark.group = f"allocation {num_groups} groups x 7 bits"
    if how == "cp-sat size":
        a = benchmark.pedantic(lambda: solve(groups, size_budget_bits=size), rounds=3, warmup_rounds=0)
        assert a.size_bits <= size and a.status == "OPTIMAL"
    elif how == "cp-sat size+bops":
        a = benchmark.pedantic(lambda: solve(groups, size_budget_bits=size, bops_budget=bops), rounds=3,
                               warmup_rounds=0)
        assert a.size_bits <= size and a.bops <= bops
    else:
        r = benchmark.pedantic(lambda: solve_relaxed(groups, size_budget_bits=size), rounds=3, warmup_rounds=0)
        benchmark.extra_info["over_budget"] = r.size_bits > size
