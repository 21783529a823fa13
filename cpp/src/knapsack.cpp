// Exact multiple-choice knapsack: Pareto dynamic programming from the LP solution, with bounds (knapsack.hpp).
#include "ompq/knapsack.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace ompq {
namespace {

using i64 = std::int64_t;
constexpr i64 kSumLimit = i64{1} << 62;

struct Item {  // one choice of a group: its cost above the group's cheapest, value, tiebreak, own index
    i64 cost, value, tiebreak;
    std::int32_t index;
};

using Clock = std::chrono::steady_clock;

struct Segment {  // one edge of a group's upper hull in the (cost, value) plane
    std::size_t group, from;
    i64 dcost, dvalue;  // both > 0
};

// a * b <=> c * d for non-negative 64-bit operands, exactly (128-bit products from 32-bit halves).
struct Wide {
    std::uint64_t hi, lo;
};
Wide product(std::uint64_t a, std::uint64_t b) {
    const std::uint64_t mask = 0xffffffffu, al = a & mask, ah = a >> 32, bl = b & mask, bh = b >> 32;
    const std::uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    const std::uint64_t mid = (ll >> 32) + (lh & mask) + (hl & mask);
    return {hh + (lh >> 32) + (hl >> 32) + (mid >> 32), (mid << 32) | (ll & mask)};
}
bool product_less(i64 a, i64 b, i64 c, i64 d) {
    const Wide x = product(static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b));
    const Wide y = product(static_cast<std::uint64_t>(c), static_cast<std::uint64_t>(d));
    return x.hi != y.hi ? x.hi < y.hi : x.lo < y.lo;
}

// The upper concave hull of a group's items: cost and value both strictly increasing, slopes strictly
// decreasing. Returns positions into items.
std::vector<std::size_t> upper_hull(const std::vector<Item>& items) {
    std::vector<std::size_t> order(items.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        if (items[a].cost != items[b].cost) return items[a].cost < items[b].cost;
        return items[a].value > items[b].value;
    });
    std::vector<std::size_t> hull;
    for (std::size_t i : order) {
        const Item& p = items[i];
        if (!hull.empty() && p.value <= items[hull.back()].value) continue;  // dominated (or an equal cost)
        while (hull.size() >= 2) {  // drop b if it lies on or below the line from a to p
            const Item& a = items[hull[hull.size() - 2]];
            const Item& b = items[hull.back()];
            if (product_less(p.value - a.value, b.cost - a.cost, b.value - a.value, p.cost - a.cost)) break;
            hull.pop_back();
        }
        hull.push_back(i);
    }
    return hull;
}

// The LP relaxation, greedily (Dantzig): every group starts at its cheapest hull point and the hull edges
// are taken by decreasing slope while they fit. The points reached before the first edge that does not fit
// are the reference solution: every edge taken is at least as steep as lambda (that edge's slope, the LP's
// multiplier; 0 if all fit), every edge not taken at most as steep. Edges that still fit after it are then
// taken too, for a first feasible solution (the incumbent, whose value is returned).
struct Reference {
    std::vector<std::size_t> at;  // the reference choice of each group (position in items[g])
    std::vector<double> up, down;  // slope of the hull edge leaving it upwards (0: none) and arriving from below (inf: none)
    double lambda = 0.0;
    i64 incumbent = 0;
};

Reference lp_reference(const std::vector<std::vector<Item>>& items, i64 room) {
    const std::size_t groups = items.size();
    std::vector<std::vector<std::size_t>> hulls(groups);
    std::vector<Segment> segments;
    for (std::size_t g = 0; g < groups; ++g) {
        hulls[g] = upper_hull(items[g]);
        for (std::size_t j = 0; j + 1 < hulls[g].size(); ++j) {
            const Item &a = items[g][hulls[g][j]], &b = items[g][hulls[g][j + 1]];
            segments.push_back({g, j, b.cost - a.cost, b.value - a.value});
        }
    }
    std::sort(segments.begin(), segments.end(), [](const Segment& x, const Segment& y) {
        if (product_less(y.dvalue, x.dcost, x.dvalue, y.dcost)) return true;  // x steeper
        if (product_less(x.dvalue, y.dcost, y.dvalue, x.dcost)) return false;
        return x.group != y.group ? x.group < y.group : x.from < y.from;
    });
    std::vector<std::size_t> at(groups, 0), reference;
    i64 left = room;  // every hull starts at cost 0: the costs are reduced
    Reference ref;
    for (const Segment& s : segments) {
        if (at[s.group] != s.from) continue;  // an earlier edge of its group did not fit
        if (s.dcost <= left) {
            left -= s.dcost;
            ++at[s.group];
        } else if (reference.empty()) {
            reference = at;
            ref.lambda = static_cast<double>(s.dvalue) / static_cast<double>(s.dcost);
        }
    }
    if (reference.empty()) reference = at;
    const double inf = std::numeric_limits<double>::infinity();
    ref.at.resize(groups);
    ref.up.assign(groups, 0.0);
    ref.down.assign(groups, inf);
    for (std::size_t g = 0; g < groups; ++g) {
        const std::vector<std::size_t>& h = hulls[g];
        const std::size_t j = reference[g];
        auto slope = [&](std::size_t a, std::size_t b) {
            return static_cast<double>(items[g][h[b]].value - items[g][h[a]].value) /
                   static_cast<double>(items[g][h[b]].cost - items[g][h[a]].cost);
        };
        ref.at[g] = h[j];
        if (j + 1 < h.size()) ref.up[g] = slope(j, j + 1);
        if (j > 0) ref.down[g] = slope(j - 1, j);
        ref.incumbent += items[g][h[at[g]]].value;
    }
    return ref;
}

struct State {
    i64 cost, value, tiebreak;  // of the whole solution: the groups not yet decided at their reference
    std::uint32_t lex;          // lexicographic rank of the choices so far (natural order only)
};

struct Child {
    i64 cost, value, tiebreak;
    std::uint32_t parent_lex, parent;
    std::int32_t index;  // the choice within the group
};

// Cheaper first; at equal cost the better one first: larger value, tiebreak, then choices.
bool comes_first(const Child& x, const Child& y) {
    if (x.cost != y.cost) return x.cost < y.cost;
    if (x.value != y.value) return x.value > y.value;
    if (x.tiebreak != y.tiebreak) return x.tiebreak > y.tiebreak;
    if (x.parent_lex != y.parent_lex) return x.parent_lex > y.parent_lex;
    return x.index > y.index;
}

// Whether x beats y in (value, tiebreak), then, with lexicographic, in the choices.
bool better(const Child& x, const Child& y, bool lexicographic) {
    if (x.value != y.value) return x.value > y.value;
    if (x.tiebreak != y.tiebreak) return x.tiebreak > y.tiebreak;
    if (!lexicographic) return false;
    if (x.parent_lex != y.parent_lex) return x.parent_lex > y.parent_lex;
    return x.index > y.index;
}

// The dynamic program over the groups in a given order, starting from the reference solution: a state is
// the reference with the groups decided so far changed, so it may cost more than the room while the groups
// to come can still give cost back. Its bound (Dembo and Hammer): the groups to come can add cost only at
// their edges' slopes upwards, at most `low` (the steepest), and give cost back only at their slopes
// downwards, at least `high` (the flattest), so
//     bound = value + low * (room - cost)    if cost <= room,
//             value - high * (cost - room)   otherwise.
// (Lagrangian bounds with multipliers low <= lambda <= high, at which the reference choice is each group's
// best.) Processing the groups closest to the LP's multiplier first makes low and high move away from it,
// which tightens the bound for every state that strays from the room.
struct Search {
    const std::vector<std::vector<Item>>& items;
    const Reference& ref;
    i64 room;
    std::vector<std::size_t> order;  // the groups in processing order
    bool lexicographic;              // natural order: ranks for the last tie-break; else only detect ties
    std::vector<double> low, high;   // over the groups from position i on
    std::vector<i64> give_back;      // the most cost the groups from position i on can give back
    double margin;                   // covers the rounding of values and thresholds in doubles
    State start{0, 0, 0, 0};         // the reference solution

    Search(const std::vector<std::vector<Item>>& items_, const Reference& ref_, i64 room_,
           std::vector<std::size_t> order_, bool lexicographic_, double value_total)
        : items(items_), ref(ref_), room(room_), order(std::move(order_)), lexicographic(lexicographic_) {
        const std::size_t n = order.size();
        low.assign(n + 1, 0.0);
        high.assign(n + 1, std::numeric_limits<double>::infinity());
        give_back.assign(n + 1, 0);
        for (std::size_t i = n; i-- > 0;) {
            const std::size_t g = order[i];
            low[i] = std::max(low[i + 1], ref.up[g]);
            high[i] = std::min(high[i + 1], ref.down[g]);
            const Item& r = items[g][ref.at[g]];
            give_back[i] = give_back[i + 1] + r.cost;
            start.cost += r.cost;
            start.value += r.value;
            start.tiebreak += r.tiebreak;
        }
        margin = std::ldexp(value_total, -48);
    }

    // Keeps only states whose bound reaches threshold. On success writes the best complete solution kept
    // (if one is: found) to choices, its value to best, and whether a state on its path had a tie in
    // (value, tiebreak) dropped without the lexicographic rule (tie: another optimum may come first).
    KnapsackStatus run(double threshold, std::size_t max_states, Clock::time_point deadline, KnapsackResult& result,
                       bool& found, bool& tie, i64& best, std::int32_t* choices) const {
        const std::size_t n = order.size();
        const double cut = threshold - margin;
        std::vector<std::vector<std::uint32_t>> parents(n);  // back pointers, in the kept order
        std::vector<std::vector<std::int32_t>> picks(n);
        std::vector<std::vector<bool>> tied(n);  // whether a kept state had a tie dropped
        std::vector<State> states{start};
        std::vector<std::vector<Child>> lists;
        std::vector<Child> kept;
        std::vector<std::uint32_t> rank;
        std::size_t count = 0;
        found = false;
        for (std::size_t i = 0; i < n; ++i) {
            if (deadline != Clock::time_point::max() && Clock::now() > deadline) return KnapsackStatus::time_limit;
            const std::size_t g = order[i];
            const Item& r = items[g][ref.at[g]];
            // One list of children per choice, each sorted by cost like the parents; bounds prune.
            lists.assign(items[g].size(), {});
            for (std::size_t j = 0; j < items[g].size(); ++j) {
                const Item& it = items[g][j];
                for (std::uint32_t p = 0; p < states.size(); ++p) {
                    const State& s = states[p];
                    const i64 cost = s.cost - r.cost + it.cost;
                    if (cost - give_back[i + 1] > room) break;  // cannot get back under the room
                    const i64 value = s.value - r.value + it.value;
                    const double spare = static_cast<double>(room - cost);
                    const double trade = spare >= 0 ? low[i + 1] * spare : high[i + 1] * spare;
                    if (static_cast<double>(value) + trade < cut - std::ldexp(std::fabs(trade), -48)) continue;
                    lists[j].push_back({cost, value, s.tiebreak - r.tiebreak + it.tiebreak, s.lex, p, it.index});
                }
            }
            // Merge by cost; keep a child only if it beats every cheaper (or equally cheap, earlier) one.
            kept.clear();
            std::vector<std::size_t> head(lists.size(), 0);
            for (;;) {
                std::size_t pick = lists.size();
                for (std::size_t j = 0; j < lists.size(); ++j)
                    if (head[j] < lists[j].size() &&
                        (pick == lists.size() || comes_first(lists[j][head[j]], lists[pick][head[pick]])))
                        pick = j;
                if (pick == lists.size()) break;
                const Child& c = lists[pick][head[pick]++];
                if (kept.empty() || better(c, kept.back(), lexicographic)) {
                    kept.push_back(c);
                    tied[i].push_back(false);
                } else if (c.value == kept.back().value && c.tiebreak == kept.back().tiebreak) {
                    tied[i].back() = true;  // c does as well as the state kept: its choices could win the tie-break
                }
            }
            if (kept.empty()) return KnapsackStatus::optimal;  // nothing reaches the threshold
            count += kept.size();
            result.states += kept.size();
            result.peak_states = std::max(result.peak_states, kept.size());
            if (count > max_states) return KnapsackStatus::too_many_states;
            rank.assign(kept.size(), 0);
            if (lexicographic) {  // the kept states' ranks: by the parent's rank, then the choice
                std::vector<std::uint32_t> by_choices(kept.size());
                for (std::uint32_t k = 0; k < by_choices.size(); ++k) by_choices[k] = k;
                std::sort(by_choices.begin(), by_choices.end(), [&](std::uint32_t a, std::uint32_t b) {
                    const Child &x = kept[a], &y = kept[b];
                    return x.parent_lex != y.parent_lex ? x.parent_lex < y.parent_lex : x.index < y.index;
                });
                for (std::uint32_t k = 0; k < by_choices.size(); ++k) rank[by_choices[k]] = k;
            }
            states.resize(kept.size());
            parents[i].resize(kept.size());
            picks[i].resize(kept.size());
            for (std::size_t k = 0; k < kept.size(); ++k) {
                states[k] = {kept[k].cost, kept[k].value, kept[k].tiebreak, rank[k]};
                parents[i][k] = kept[k].parent;
                picks[i][k] = kept[k].index;
            }
        }
        // Each kept state beats all cheaper ones, so the last is the best.
        std::uint32_t at = static_cast<std::uint32_t>(states.size() - 1);
        best = states[at].value;
        for (std::size_t i = n; i-- > 0;) {
            choices[order[i]] = picks[i][at];
            tie = tie || tied[i][at];
            at = parents[i][at];
        }
        found = true;
        return KnapsackStatus::optimal;
    }

    // Rounds with the threshold stepping down from the LP bound (steps growing 1.5x) to the value of the best
    // solution known: a round whose best solution reaches its threshold has seen every solution at least as
    // good, so it holds the optimum. Near-optimal thresholds keep far fewer states than the incumbent's would.
    KnapsackStatus solve(std::size_t max_states, Clock::time_point deadline, KnapsackResult& result, bool& tie,
                         std::int32_t* choices) const {
        const double root = static_cast<double>(start.value) + ref.lambda * static_cast<double>(room - start.cost);
        const double gap = std::max(root - static_cast<double>(ref.incumbent), 0.0);
        i64 floor = ref.incumbent;  // a value some solution reaches
        for (double step = std::max(gap / 4096.0, 1.0);; step *= 1.5) {
            const bool last = root - step <= static_cast<double>(floor);
            const double threshold = last ? static_cast<double>(floor) : root - step;
            bool found = false;
            i64 best = 0;
            tie = false;
            const KnapsackStatus status = run(threshold, max_states, deadline, result, found, tie, best, choices);
            if (status != KnapsackStatus::optimal) return status;
            if (found && (last || static_cast<double>(best) >= threshold)) return status;
            if (last) throw std::logic_error("internal error: the knapsack bound pruned every state");
            if (found) floor = std::max(floor, best);  // the next round at most down to this solution's value
        }
    }
};

void check_sum(i64& sum, i64 term, const char* what) {
    if (term > kSumLimit - sum)
        throw std::invalid_argument(std::string("the sum over the groups of their largest ") + what +
                                    " exceeds 2^62; express it in coarser units");
    sum += term;
}

}  // namespace

KnapsackResult solve_knapsack(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* tiebreaks,
                              const std::int64_t* offsets, std::size_t num_groups, std::int64_t capacity,
                              std::size_t max_states, double time_limit_s, std::int32_t* choices) {
    const auto deadline = time_limit_s > 0 ? Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(time_limit_s))
                                           : Clock::time_point::max();
    if (num_groups == 0) throw std::invalid_argument("no groups: give at least one");
    if (offsets[0] != 0) throw std::invalid_argument("offsets[0] must be 0");
    if (capacity < 0) throw std::invalid_argument("capacity must be >= 0");
    max_states = std::min<std::size_t>(max_states, std::numeric_limits<std::uint32_t>::max());

    // Items with costs reduced by their group's cheapest; the reduced capacity.
    std::vector<std::vector<Item>> items(num_groups);
    i64 cheapest_total = 0, value_total = 0, tiebreak_total = 0, cost_total = 0;
    for (std::size_t g = 0; g < num_groups; ++g) {
        const i64 begin = offsets[g], end = offsets[g + 1];
        if (end <= begin) throw std::invalid_argument("group " + std::to_string(g) + " has no choices");
        if (end - begin > std::numeric_limits<std::int32_t>::max())
            throw std::invalid_argument("group " + std::to_string(g) + " has too many choices");
        i64 cheapest = std::numeric_limits<i64>::max(), top_value = 0, top_tiebreak = 0, top_cost = 0;
        for (i64 i = begin; i < end; ++i) {
            if (costs[i] < 0 || tiebreaks[i] < 0) throw std::invalid_argument("costs and tiebreaks must be >= 0");
            if (values[i] < -kSumLimit || values[i] > kSumLimit)
                throw std::invalid_argument("a value's magnitude exceeds 2^62; express it in coarser units");
            cheapest = std::min(cheapest, costs[i]);
            top_value = std::max(top_value, values[i] < 0 ? -values[i] : values[i]);
            top_tiebreak = std::max(top_tiebreak, tiebreaks[i]);
            top_cost = std::max(top_cost, costs[i]);
        }
        check_sum(value_total, top_value, "absolute value");
        check_sum(tiebreak_total, top_tiebreak, "tiebreak");
        check_sum(cost_total, top_cost, "cost");
        cheapest_total += cheapest;  // <= cost_total
        for (i64 i = begin; i < end; ++i)
            items[g].push_back({costs[i] - cheapest, values[i], tiebreaks[i], static_cast<std::int32_t>(i - begin)});
    }
    KnapsackResult result;
    if (cheapest_total > capacity) return result;  // infeasible
    const i64 room = std::min(capacity - cheapest_total, cost_total);  // more room than all costs changes nothing
    for (auto& group : items)  // a choice that alone costs more than the room can never be taken
        group.erase(std::remove_if(group.begin(), group.end(), [&](const Item& it) { return it.cost > room; }),
                    group.end());

    const Reference ref = lp_reference(items, room);

    // First the groups closest to the LP's multiplier; ties in (value, tiebreak) met there are broken again
    // by a run in the natural order, which ranks the choices lexicographically.
    std::vector<std::size_t> order(num_groups);
    std::vector<double> distance(num_groups);
    for (std::size_t g = 0; g < num_groups; ++g) {
        order[g] = g;
        const double above = ref.up[g] > 0 ? ref.lambda - ref.up[g] : std::numeric_limits<double>::infinity();
        distance[g] = std::min(above, ref.down[g] - ref.lambda);
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return distance[a] < distance[b]; });
    const double value_scale = static_cast<double>(value_total);
    bool tie = false;
    KnapsackStatus status = Search(items, ref, room, order, false, value_scale)
                                .solve(max_states, deadline, result, tie, choices);
    if (status == KnapsackStatus::optimal && tie) {
        for (std::size_t g = 0; g < num_groups; ++g) order[g] = g;
        status = Search(items, ref, room, order, true, value_scale).solve(max_states, deadline, result, tie, choices);
    }
    result.status = status;
    return result;
}

}  // namespace ompq
