// Exact multiple-choice knapsack: the bit allocation under one budget (or two: solve_knapsack2).
//
// Group g offers the choices [offsets[g], offsets[g + 1]) of the arrays values, costs and tiebreaks; exactly
// one is picked per group so that the sum of costs stays <= capacity and, in this order of priority,
//   1. the sum of values is largest,
//   2. then the sum of tiebreaks is largest (the bit allocation: the model size used),
//   3. then the vector of chosen indices is lexicographically largest (the first group first; within a group
//      a larger index wins, and the bit allocation lists a group's bit-widths in increasing order).
// The answer is therefore a function of the input alone, the same as the three stages of the CP-SAT model.
//
// Method (docs/KERNELS.md): dynamic programming over the groups, starting from the LP relaxation's solution
// and taking the groups with the largest share of the room first, keeping only Pareto states (no other state
// costs no more and is at least as good) whose bound (Dembo-Hammer's line, then the exact LP value of the
// groups to come) reaches a threshold that steps down from the LP bound, or the best plan met on the way; a
// round whose best plan reaches its threshold holds the optimum. Ties met on the optimum's path are broken
// again by a run in the natural order with lexicographic ranks. Values, costs and tiebreaks are
// summed in exact 64-bit integers; bounds in doubles with a proven rounding margin (any multiplier gives a
// valid bound, so rounding only costs pruning). Exact whatever the input; the work depends on how many
// states survive (docs/BENCHMARKS.md). Beyond max_states states in one round, or past time_limit_s, the
// solver stops and says so.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ompq {

enum class KnapsackStatus {
    optimal,           // choices holds the optimum
    infeasible,        // no choice of every group stays within the capacity (or capacities)
    too_many_states,   // stopped: more than max_states states were kept
    time_limit,        // stopped: time_limit_s passed
};

struct KnapsackResult {
    KnapsackStatus status = KnapsackStatus::infeasible;
    std::size_t states = 0;       // states kept, over all groups and rounds
    std::size_t peak_states = 0;  // most states kept after one group
};

// Preconditions (std::invalid_argument otherwise): num_groups >= 1; offsets[0] == 0 and every group has at
// least one choice; costs and tiebreaks >= 0; capacity >= 0; for each of values (absolute), costs and
// tiebreaks, the sum over the groups of the group's largest entry is at most 2^62, and so is the sum over the
// groups of (largest value - smallest value).
// choices: num_groups entries, each the chosen index within its group (0-based); written when optimal.
// time_limit_s <= 0: no time limit.
KnapsackResult solve_knapsack(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* tiebreaks,
                              const std::int64_t* offsets, std::size_t num_groups, std::int64_t capacity,
                              std::size_t max_states, double time_limit_s, std::int32_t* choices);

// Two budgets: also sum of costs2 <= capacity2 (costs2 >= 0, the same sum limit). The same order of priority.
// A state is dropped only for one that costs no more under either budget and is at least as good; the bound
// relaxes the second budget with the multiplier mu that makes the LP bound smallest (a search over mu, each
// step an LP) and, as second opinions, at 0 and 1/4 .. 4 times mu (a state goes when any bound rules it
// out); states that cannot get back under the second room go too. The search meets in the middle: a second
// pass over the reversed order, the two on two threads where OpenMP offers them (else taking turns), then
// the best pair of their states within both rooms (docs/KERNELS.md). The plan does not depend on the thread
// count; the states counted do. On 1024 groups with both budgets binding: a median of about 20 k states, at
// most about 3 M in the instances measured (docs/BENCHMARKS.md).
KnapsackResult solve_knapsack2(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* costs2,
                               const std::int64_t* tiebreaks, const std::int64_t* offsets, std::size_t num_groups,
                               std::int64_t capacity, std::int64_t capacity2, std::size_t max_states,
                               double time_limit_s, std::int32_t* choices);

}  // namespace ompq
