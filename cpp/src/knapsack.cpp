// Exact multiple-choice knapsack: Pareto dynamic programming from the LP solution, with bounds (knapsack.hpp).
#include "ompq/knapsack.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ompq {
namespace {

using i64 = std::int64_t;
constexpr i64 kSumLimit = i64{1} << 62;

struct Item {  // one choice of a group: its costs above the group's cheapest, value, tiebreak, own index
    i64 cost, value, tiebreak;
    std::int32_t index;
    i64 cost2 = 0;  // under a second budget (0 without one)
};

using Clock = std::chrono::steady_clock;

struct Segment {  // one edge of a group's upper hull in the (cost, value) plane, from its point `from`
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

// Whether hull edge x is steeper (more value per unit of cost) than y, exactly.
bool steeper(const Segment& x, const Segment& y) { return product_less(y.dvalue, x.dcost, x.dvalue, y.dcost); }

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
// taken too, for a first feasible solution.
struct Reference {
    std::vector<std::size_t> at;  // the reference choice of each group (position in items[g])
    std::vector<Segment> above, below;  // the hull edges above the reference choices and below them
    std::vector<double> up, down;  // slope of the hull edge leaving it upwards (0: none) and arriving from below (inf: none)
    double lambda = 0.0;
    std::vector<std::size_t> filled;  // the greedy solution: the reference plus the edges that still fit after it
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
        if (steeper(x, y)) return true;
        if (steeper(y, x)) return false;
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
        for (std::size_t k = 0; k + 1 < h.size(); ++k) {
            const Item &a = items[g][h[k]], &b = items[g][h[k + 1]];
            (k < j ? ref.below : ref.above).push_back({g, k, b.cost - a.cost, b.value - a.value});
        }
        if (j + 1 < h.size()) ref.up[g] = slope(j, j + 1);
        if (j > 0) ref.down[g] = slope(j - 1, j);
        ref.filled.push_back(h[at[g]]);
    }
    return ref;
}

struct State {
    i64 cost, value, tiebreak;  // of the whole solution: the groups not yet decided at their reference
    std::uint32_t lex;          // lexicographic rank of the choices so far (natural order only)
    i64 cost2;                  // under the second budget
};

struct Child {
    i64 cost, value, tiebreak;
    std::uint32_t parent_lex, parent;
    std::int32_t index;  // the choice within the group
    i64 cost2;
    std::uint32_t rank2 = 0;    // the rank of cost2 among the children's (two budgets)
    std::uint32_t kept_as = std::numeric_limits<std::uint32_t>::max();  // its place among the kept states, if kept
};

// Cheaper first; at equal cost the better one first: larger value, tiebreak, then choices.
bool comes_first(const Child& x, const Child& y) {
    if (x.cost != y.cost) return x.cost < y.cost;
    if (x.value != y.value) return x.value > y.value;
    if (x.tiebreak != y.tiebreak) return x.tiebreak > y.tiebreak;
    if (x.parent_lex != y.parent_lex) return x.parent_lex > y.parent_lex;
    return x.index > y.index;
}

// Whether x beats y in (value, tiebreak), then, with lexicographic, in the choices (a Child or a Key).
template <typename X, typename Y>
bool better(const X& x, const Y& y, bool lexicographic) {
    if (x.value != y.value) return x.value > y.value;
    if (x.tiebreak != y.tiebreak) return x.tiebreak > y.tiebreak;
    if (!lexicographic) return false;
    if (x.parent_lex != y.parent_lex) return x.parent_lex > y.parent_lex;
    return x.index > y.index;
}

// What `better` compares of a kept state, and its place among them (kNone: no state).
struct Key {
    i64 value, tiebreak;
    std::uint32_t parent_lex;
    std::int32_t index;
    std::uint32_t id;
};
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

// Best-so-far over a prefix of ranks (a Fenwick tree of keys, compared by `better`): the kept state that beats
// all others among those whose second cost is at most a given one. The keys are copied into the tree: comparing
// them there saves a random access per step.
class PrefixBest {
  public:
    void reset(std::size_t size) { tree_.assign(size + 1, kEmpty); }
    Key query(std::size_t rank, bool lexicographic) const {  // over ranks 0..rank
        Key best = kEmpty;
        for (std::size_t i = rank + 1; i > 0; i -= i & (~i + 1))
            if (better(tree_[i], best, lexicographic)) best = tree_[i];
        return best;
    }
    void insert(std::size_t rank, const Key& key, bool lexicographic) {
        for (std::size_t i = rank + 1; i < tree_.size(); i += i & (~i + 1))
            if (better(key, tree_[i], lexicographic)) tree_[i] = key;
    }

  private:
    // Beaten by every state: no value reaches the lowest int64 (their sums stay within 2^62).
    static constexpr Key kEmpty{std::numeric_limits<i64>::min(), 0, 0, 0, kNone};
    std::vector<Key> tree_;
};

// What the LP relaxation of the groups still to come gains from `amount` more cost (the edges above their
// reference choices, steepest first) or loses giving `amount` back (the edges below, flattest first): a Fenwick
// tree of the edges' costs and values in that order, from which a decided group's edges are taken out. Exact
// where the Dembo-Hammer bound takes one slope for all: it matters for states far from the room.
class Curve {
  public:
    Curve() = default;
    Curve(std::vector<Segment> edges, bool steepest_first, std::size_t num_groups) {
        std::sort(edges.begin(), edges.end(), [&](const Segment& x, const Segment& y) {
            if (steeper(x, y)) return steepest_first;
            if (steeper(y, x)) return !steepest_first;
            return x.group < y.group;  // (no two edges of a group have one slope)
        });
        const std::size_t n = edges.size();
        slope_.resize(n);
        cost_.assign(n + 1, 0);
        value_.assign(n + 1, 0);
        start_.assign(num_groups + 1, 0);
        for (const Segment& e : edges) ++start_[e.group + 1];
        for (std::size_t g = 0; g < num_groups; ++g) start_[g + 1] += start_[g];
        slots_.resize(n);
        std::vector<std::uint32_t> next(start_.begin(), start_.end() - 1);
        for (std::size_t k = 0; k < n; ++k) {
            slope_[k] = static_cast<double>(edges[k].dvalue) / static_cast<double>(edges[k].dcost);
            slots_[next[edges[k].group]++] = static_cast<std::uint32_t>(k);
            add(k, edges[k].dcost, edges[k].dvalue);
            total_ += edges[k].dcost;
        }
        for (top_ = 1; top_ * 2 <= n; top_ *= 2) {}
    }
    void remove(std::size_t group) {  // its edges no longer count (its choice is decided)
        for (std::uint32_t k = start_[group]; k < start_[group + 1]; ++k) {
            const std::size_t at = slots_[k];
            const i64 cost = prefix(cost_, at + 1) - prefix(cost_, at), value = prefix(value_, at + 1) - prefix(value_, at);
            add(at, -cost, -value);
            total_ -= cost;
        }
    }
    i64 total() const { return total_; }  // the cost of all edges left
    double trade(i64 amount) const {  // amount in [0, total()] (beyond: the whole curve)
        std::size_t at = 0;
        i64 value = 0;
        for (std::size_t step = top_; step > 0; step >>= 1)
            if (at + step < cost_.size() && cost_[at + step] <= amount) {
                at += step;
                amount -= cost_[at];
                value += value_[at];
            }
        return static_cast<double>(value) + (at < slope_.size() ? static_cast<double>(amount) * slope_[at] : 0.0);
    }

  private:
    void add(std::size_t at, i64 cost, i64 value) {
        for (std::size_t i = at + 1; i < cost_.size(); i += i & (~i + 1)) cost_[i] += cost, value_[i] += value;
    }
    static i64 prefix(const std::vector<i64>& tree, std::size_t end) {
        i64 sum = 0;
        for (std::size_t i = end; i > 0; i -= i & (~i + 1)) sum += tree[i];
        return sum;
    }
    std::vector<double> slope_;
    std::vector<i64> cost_, value_;  // Fenwick trees, 1-based
    std::vector<std::uint32_t> start_, slots_;  // each group's edges: slots_[start_[g] .. start_[g + 1])
    std::size_t top_ = 0;
    i64 total_ = 0;
};

// The guide problem at a multiplier mu of the second budget: values - mu * costs2, scaled by `scale` and rounded
// to integers for the exact hull (the items themselves where mu is 0), its LP reference and LP bound (in value
// units, plus mu * room2).
struct Guide {
    Reference ref;
    double scale = 1.0, mu = 0.0, bound = 0.0;
};

Guide guide_at(const std::vector<std::vector<Item>>& items, i64 room, i64 room2, double mu) {
    Guide guide{{}, 1.0, mu, 0.0};
    std::vector<std::vector<Item>> scaled;
    if (mu > 0) {
        double top = 1.0;
        for (const auto& group : items)
            for (const Item& it : group)
                top = std::max(top, std::fabs(static_cast<double>(it.value) - mu * static_cast<double>(it.cost2)));
        guide.scale = std::ldexp(1.0, 52 - std::ilogb(top) - 1 - std::ilogb(static_cast<double>(items.size()) + 1));
        scaled = items;
        for (auto& group : scaled)
            for (Item& it : group)
                it.value = std::llround((static_cast<double>(it.value) - mu * static_cast<double>(it.cost2)) *
                                        guide.scale);
    }
    const auto& values = mu > 0 ? scaled : items;
    guide.ref = lp_reference(values, room);
    double value = 0, cost = 0;
    for (std::size_t g = 0; g < items.size(); ++g) {
        value += static_cast<double>(values[g][guide.ref.at[g]].value);
        cost += static_cast<double>(items[g][guide.ref.at[g]].cost);
    }
    guide.bound = (value + guide.ref.lambda * (static_cast<double>(room) - cost)) / guide.scale +
                  mu * static_cast<double>(room2);
    return guide;
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
// With a second budget the value in that bound is value - mu * cost2 (the second budget relaxed with a
// multiplier mu >= 0, so value <= that + mu * room2 for every plan within it; the hull and slopes come from
// `guide` values, that quantity scaled and rounded to integers, whose rounding `slack` covers), states that
// cannot get back under the second room are dropped, and a state is dominated only by one that costs no more
// under both budgets.
struct Search {
    // The bound at one multiplier of the second budget (0 without one), from that multiplier's guide: over
    // positions i on, the steepest / flattest hull slopes (value per unit of cost), what moving the groups from
    // the search's reference to the guide's changes in both costs, and the value at the guide's reference.
    struct Bound {
        double mu, slack;
        std::vector<double> low, high;
        std::vector<i64> cost, cost2, value;
        double scale;
        Curve above, below;  // the exact LP trade of all groups (run() takes out the decided ones)
    };
    std::vector<Bound> bounds;  // the search's own multiplier first, then second opinions
    const std::vector<std::vector<Item>>& items;
    const Reference& ref;
    i64 room, room2;
    bool two;                        // a second budget
    std::vector<std::size_t> order;  // the groups in processing order
    bool lexicographic;              // natural order: ranks for the last tie-break; else only detect ties
    std::vector<i64> give_back, give_back2;  // the most cost the groups from position i on can give back
    std::vector<i64> reference_value;        // the value of the groups from position i on at the reference
    double margin;                   // covers the rounding of values and thresholds in doubles
    State start{0, 0, 0, 0, 0};      // the reference solution

    Search(const std::vector<std::vector<Item>>& items_, const Guide& guide, i64 room_, i64 room2_, bool two_,
           std::vector<std::size_t> order_, bool lexicographic_, double value_total)
        : items(items_), ref(guide.ref), room(room_), room2(room2_), two(two_), order(std::move(order_)),
          lexicographic(lexicographic_) {
        const std::size_t n = order.size();
        give_back.assign(n + 1, 0);
        give_back2.assign(n + 1, 0);
        reference_value.assign(n + 1, 0);
        for (std::size_t i = n; i-- > 0;) {
            const Item& r = items[order[i]][ref.at[order[i]]];
            give_back[i] = give_back[i + 1] + r.cost;
            give_back2[i] = give_back2[i + 1] + r.cost2;  // costs are reduced: every group's cheapest is 0
            reference_value[i] = reference_value[i + 1] + r.value;
            start.cost += r.cost;
            start.value += r.value;
            start.tiebreak += r.tiebreak;
            start.cost2 += r.cost2;
        }
        margin = std::ldexp(value_total + guide.mu * static_cast<double>(room2), -48);
        add(guide);
    }

    // A bound at the guide's multiplier (the first one added is the search's own).
    void add(const Guide& guide) {
        const std::size_t n = order.size();
        // Guide values are within 0.5 / scale of value - mu * cost2 for each group: twice that per group bounds
        // what rounding adds to a plan's bound.
        Bound b{guide.mu, two ? static_cast<double>(n) / guide.scale : 0.0, std::vector<double>(n + 1, 0.0),
                std::vector<double>(n + 1, std::numeric_limits<double>::infinity()), std::vector<i64>(n + 1, 0),
                std::vector<i64>(n + 1, 0), std::vector<i64>(n + 1, 0), guide.scale,
                Curve(guide.ref.above, true, n), Curve(guide.ref.below, false, n)};
        for (std::size_t i = n; i-- > 0;) {
            const std::size_t g = order[i];
            b.low[i] = std::max(b.low[i + 1], guide.ref.up[g] / guide.scale);
            b.high[i] = std::min(b.high[i + 1], guide.ref.down[g] / guide.scale);
            const Item &mine = items[g][ref.at[g]], &theirs = items[g][guide.ref.at[g]];
            b.cost[i] = b.cost[i + 1] + (theirs.cost - mine.cost);
            b.cost2[i] = b.cost2[i + 1] + (theirs.cost2 - mine.cost2);
            b.value[i] = b.value[i + 1] + theirs.value;
        }
        bounds.push_back(std::move(b));
    }

    // A state's bound at one multiplier (see above: for the groups from position next on, relative to that
    // multiplier's reference), and in err a margin for its rounding.
    double bound(const Bound& b, i64 value, i64 cost, i64 cost2, std::size_t next, double& err) const {
        const double spare = static_cast<double>(room - (cost + b.cost[next]));
        const double trade = spare >= 0 ? b.low[next] * spare : b.high[next] * spare;
        return with_trade(b, value, cost2, next, trade, 0x1p-48, err);
    }

    // The bound given the trade of the groups to come: the plan with those groups at the guide's reference (its
    // value exact: each partial sum is a plan's value or part of one, within 2^62), the second budget relaxed at
    // the guide's multiplier, plus the trade; err: `rounding` of the terms' magnitudes and the guide's slack.
    double with_trade(const Bound& b, i64 value, i64 cost2, std::size_t next, double trade, double rounding,
                      double& err) const {
        const double relaxed = b.mu * static_cast<double>(room2 - (cost2 + b.cost2[next]));
        const double v = static_cast<double>(value - reference_value[next] + b.value[next]);
        err = (std::fabs(trade) + std::fabs(relaxed) + std::fabs(v)) * rounding + b.slack;  // (not ldexp: hot)
        return v + relaxed + trade;
    }

    // The same bound with the exact LP trade of the groups to come (curves: those groups' edges) in place of
    // the one-slope line above it; minus infinity where they cannot give back enough cost.
    double exact_bound(const Bound& b, const Curve& above, const Curve& below, i64 value, i64 cost, i64 cost2,
                       std::size_t next, double& err) const {
        const i64 spare = room - (cost + b.cost[next]);
        if (spare < 0 && -spare > below.total()) return -std::numeric_limits<double>::infinity();
        const double trade = (spare >= 0 ? above.trade(spare) : -below.trade(-spare)) / b.scale;
        return with_trade(b, value, cost2, next, trade, 0x1p-47, err);
    }

    // Whether the state's bound at every multiplier reaches cut: first the one-slope bounds (cheap), then the
    // exact trades (curves: each bound's above and below curves of the groups to come).
    bool reaches(i64 value, i64 cost, i64 cost2, std::size_t next, double cut, const std::vector<Curve>& curves) const {
        double err = 0;
        for (const Bound& b : bounds)
            if (bound(b, value, cost, cost2, next, err) < cut - err) return false;
        for (std::size_t k = 0; k < bounds.size(); ++k)
            if (exact_bound(bounds[k], curves[2 * k], curves[2 * k + 1], value, cost, cost2, next, err) < cut - err)
                return false;
        return true;
    }

    // One pass over the order: the states after its first `done` groups (the groups after them at the reference),
    // with back pointers per position, and each bound's curves of the groups not yet decided. The buffers below
    // are reused from one group to the next.
    struct Pass {
        std::vector<State> states;
        std::vector<std::uint32_t> by_cost2;  // two budgets: the states in increasing second cost
        std::vector<std::vector<std::uint32_t>> parents;  // per position: each state's parent, in the kept order
        std::vector<std::vector<std::int32_t>> picks;    // per position: each state's choice there
        std::vector<std::vector<bool>> tied;             // per position: whether the state had a tie dropped
        std::vector<Curve> curves;
        std::size_t done = 0;
        std::vector<std::vector<Child>> lists;
        std::vector<std::vector<std::uint32_t>> child_of;
        std::vector<std::uint64_t> seconds;
        std::vector<Child> kept;
        PrefixBest prefix;
    };

    Pass begin() const {
        Pass pass;
        pass.states = {start};
        pass.by_cost2 = {0};
        for (const Bound& b : bounds) pass.curves.push_back(b.above), pass.curves.push_back(b.below);
        return pass;
    }

    // Decides the group at position pass.done: keeps only children whose bound reaches the cut (the threshold, or
    // floor once that is higher: floor, a value some plan reaches, rises to the best state within the rooms met).
    // Returns false where none is left (no plan reaches the cut).
    bool step(Pass& pass, double threshold, double& cut, i64& floor) const {
        const std::size_t i = pass.done++, g = order[i];
        const Item& r = items[g][ref.at[g]];
        std::vector<State>& states = pass.states;
        std::vector<std::vector<Child>>& lists = pass.lists;
        std::vector<Child>& kept = pass.kept;
        for (Curve& c : pass.curves) c.remove(g);
        // One list of children per choice, each sorted by cost like the parents; bounds prune. Two budgets: each
        // choice's child of each parent (its place in the list, or none) and all children in increasing second
        // cost (choice << 32 | place), merged from the parents' order (a choice adds one second cost to all its
        // children): ranks for the 2-D dominance.
        lists.assign(items[g].size(), {});
        if (two) pass.child_of.assign(items[g].size(), std::vector<std::uint32_t>(states.size(), kNone));
        for (std::size_t j = 0; j < items[g].size(); ++j) {
            const Item& it = items[g][j];
            for (std::uint32_t p = 0; p < states.size(); ++p) {
                const State& s = states[p];
                const i64 cost = s.cost - r.cost + it.cost;
                if (cost - give_back[i + 1] > room) break;  // cannot get back under the room
                const i64 cost2 = s.cost2 - r.cost2 + it.cost2;
                if (cost2 - give_back2[i + 1] > room2 && two) continue;
                const i64 value = s.value - r.value + it.value;
                if (!reaches(value, cost, cost2, i + 1, cut, pass.curves)) continue;
                lists[j].push_back({cost, value, s.tiebreak - r.tiebreak + it.tiebreak, s.lex, p, it.index, cost2});
                if (two) pass.child_of[j][p] = static_cast<std::uint32_t>(lists[j].size() - 1);
            }
        }
        if (two) {
            std::vector<std::uint64_t>& seconds = pass.seconds;
            seconds.clear();
            // each choice's next parent in by_cost2 with a child, that child's place and second cost
            std::vector<std::size_t> at(lists.size(), 0);
            std::vector<std::uint32_t> place(lists.size());
            std::vector<i64> head2(lists.size());
            auto advance = [&](std::size_t j) {
                while (at[j] < pass.by_cost2.size() && (place[j] = pass.child_of[j][pass.by_cost2[at[j]]]) == kNone)
                    ++at[j];
                head2[j] = at[j] < pass.by_cost2.size() ? lists[j][place[j]].cost2 : std::numeric_limits<i64>::max();
                ++at[j];
            };
            for (std::size_t j = 0; j < lists.size(); ++j) advance(j);
            std::uint32_t ranks = 0;
            i64 last = 0;
            for (;;) {
                std::size_t pick = 0;
                for (std::size_t j = 1; j < lists.size(); ++j)
                    if (head2[j] < head2[pick]) pick = j;
                if (head2[pick] == std::numeric_limits<i64>::max()) break;
                Child& c = lists[pick][place[pick]];
                ranks += !seconds.empty() && c.cost2 != last;
                last = c.cost2;
                c.rank2 = ranks;
                seconds.push_back((std::uint64_t{pick} << 32) | place[pick]);
                advance(pick);
            }
            pass.prefix.reset(seconds.empty() ? 0 : ranks + 1);
        }
        // Merge by cost; keep a child only if it beats every kept one that costs no more (one budget: the
        // cheaper or equally cheap ones before it, the last of which is the best).
        kept.clear();
        pass.tied.emplace_back();
        std::vector<bool>& tied = pass.tied.back();
        std::vector<std::size_t> head(lists.size(), 0);
        for (;;) {
            std::size_t pick = lists.size();
            for (std::size_t j = 0; j < lists.size(); ++j)
                if (head[j] < lists[j].size() &&
                    (pick == lists.size() || comes_first(lists[j][head[j]], lists[pick][head[pick]])))
                    pick = j;
            if (pick == lists.size()) break;
            Child& c = lists[pick][head[pick]++];
            const std::uint32_t rival = two            ? pass.prefix.query(c.rank2, lexicographic).id
                                        : kept.empty() ? kNone
                                                       : static_cast<std::uint32_t>(kept.size() - 1);
            if (rival == kNone || better(c, kept[rival], lexicographic)) {
                c.kept_as = static_cast<std::uint32_t>(kept.size());
                if (two) pass.prefix.insert(c.rank2, {c.value, c.tiebreak, c.parent_lex, c.index, c.kept_as}, lexicographic);
                kept.push_back(c);
                tied.push_back(false);
            } else if (c.value == kept[rival].value && c.tiebreak == kept[rival].tiebreak) {
                tied[rival] = true;  // c does as well as the state kept: its choices could win the tie-break
            }
        }
        if (kept.empty()) return false;  // nothing reaches the threshold
        // A state within the rooms is a plan (the groups to come at the reference): the best one is a floor.
        const i64 before = floor;
        for (const Child& c : kept)
            if (c.cost <= room && c.cost2 <= room2 && c.value > floor) floor = c.value;
        if (floor != before) cut = std::max(threshold, static_cast<double>(floor)) - margin;
        std::vector<std::uint32_t> rank(kept.size(), 0);
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
        if (two) {  // the kept states in increasing second cost
            pass.by_cost2.clear();
            for (const std::uint64_t k : pass.seconds) {
                const Child& c = lists[k >> 32][k & 0xffffffffu];
                if (c.kept_as != kNone) pass.by_cost2.push_back(c.kept_as);
            }
        }
        pass.parents.emplace_back(kept.size());
        pass.picks.emplace_back(kept.size());
        for (std::size_t k = 0; k < kept.size(); ++k) {
            states[k] = {kept[k].cost, kept[k].value, kept[k].tiebreak, rank[k], kept[k].cost2};
            pass.parents.back()[k] = kept[k].parent;
            pass.picks.back()[k] = kept[k].index;
        }
        return true;
    }

    // Writes the choices of the pass's decided groups on the path to its state `at`; whether that path had a tie.
    bool trace(const Pass& pass, std::uint32_t at, std::int32_t* choices) const {
        bool tie = false;
        for (std::size_t i = pass.done; i-- > 0;) {
            choices[order[i]] = pass.picks[i][at];
            tie = tie || pass.tied[i][at];
            at = pass.parents[i][at];
        }
        return tie;
    }

    // Two budgets, meet in the middle: the forward pass over the first groups of the order and `back` (the same
    // search over the reversed order) over the others, whichever keeps fewer states advancing, then the best
    // pair of their states within both rooms. Near the end of the order the forward bound (the LP of the few
    // groups left) is loose while every state must still be carried to the end; the passes meet before that.
    // A pair's plan: the forward state's choices for its groups, the backward state's for the rest (each state
    // holds the reference's choices for the groups it has not decided, so the pair counts the reference once too
    // many). The states by decreasing cost meet the backward ones by increasing cost: those that fit a state's
    // first room enter a PrefixBest over the second cost. Sets tie where another pair does as well.
    void join(const Pass& forward, const Search& back, const Pass& backward, bool& found, bool& tie, i64& best,
              std::int32_t* choices) const {
        const std::vector<State>&xs = forward.states, &ys = backward.states;
        std::vector<std::uint32_t> by_cost(ys.size()), by_room(xs.size());
        for (std::uint32_t k = 0; k < by_cost.size(); ++k) by_cost[k] = k;
        for (std::uint32_t k = 0; k < by_room.size(); ++k) by_room[k] = k;
        std::sort(by_cost.begin(), by_cost.end(), [&](std::uint32_t a, std::uint32_t b) { return ys[a].cost < ys[b].cost; });
        std::sort(by_room.begin(), by_room.end(), [&](std::uint32_t a, std::uint32_t b) { return xs[a].cost > xs[b].cost; });
        // A pair's totals: x's plus what y changed (each a plan's total or part of one: within 2^62).
        auto total = [&](i64 x, i64 y, i64 reference) { return x + (y - reference); };
        std::vector<i64> seconds;  // what the backward states changed in the second cost
        for (const State& y : ys) seconds.push_back(y.cost2 - start.cost2);
        std::sort(seconds.begin(), seconds.end());
        seconds.erase(std::unique(seconds.begin(), seconds.end()), seconds.end());
        PrefixBest prefix;
        prefix.reset(seconds.size());
        std::uint32_t best_x = kNone, best_y = kNone;
        Key best_pair{};     // the best pair's (value, tiebreak)
        bool equal = false;  // another forward state reaches it
        std::size_t entered = 0;
        for (const std::uint32_t k : by_room) {
            const State& x = xs[k];
            for (; entered < by_cost.size() && total(x.cost, ys[by_cost[entered]].cost, start.cost) <= room; ++entered) {
                const State& y = ys[by_cost[entered]];
                const std::size_t rank =
                    std::lower_bound(seconds.begin(), seconds.end(), y.cost2 - start.cost2) - seconds.begin();
                prefix.insert(rank, {y.value, y.tiebreak, 0, 0, by_cost[entered]}, false);
            }
            const std::size_t fits = std::upper_bound(seconds.begin(), seconds.end(), room2 - x.cost2) - seconds.begin();
            if (fits == 0) continue;
            const Key y = prefix.query(fits - 1, false);
            if (y.id == kNone) continue;
            const Key pair{total(x.value, y.value, start.value), total(x.tiebreak, y.tiebreak, start.tiebreak), 0, 0, k};
            if (best_x == kNone || better(pair, best_pair, false)) {
                best_x = k, best_y = y.id, best_pair = pair, equal = false;
            } else if (!better(best_pair, pair, false)) {
                equal = true;
            }
        }
        found = best_x != kNone;
        if (!found) return;
        best = best_pair.value;
        const State &x = xs[best_x], &y = ys[best_y];
        for (std::uint32_t k = 0; k < ys.size() && !equal; ++k)  // another backward state as good for x
            equal = k != best_y && total(x.cost, ys[k].cost, start.cost) <= room &&
                    total(x.cost2, ys[k].cost2, start.cost2) <= room2 && ys[k].value == y.value &&
                    ys[k].tiebreak == y.tiebreak;
        tie = tie || equal;
        tie = trace(forward, best_x, choices) || tie;
        tie = back.trace(backward, best_y, choices) || tie;
    }

    // Advances the forward pass and, with `back`, the backward one until together they have decided every group
    // (at most max_states states per round; alive: false where a pass kept none, so no plan reaches the cut).
    // With two threads (OpenMP) the passes run side by side, each claiming the next group at its end of the
    // order; else the pass with fewer states goes next. Either way they meet where their work balances.
    KnapsackStatus advance(Pass& forward, const Search* back, Pass& backward, double threshold, i64& floor,
                           std::size_t max_states, Clock::time_point deadline, KnapsackResult& result,
                           bool& alive) const {
        const std::size_t n = order.size();
        const bool timed = deadline != Clock::time_point::max();
#ifdef _OPENMP
        if (back && omp_get_max_threads() > 1) {
            struct Side {
                KnapsackStatus status = KnapsackStatus::optimal;
                bool alive = true;
                i64 floor = 0;
                std::size_t states = 0, peak = 0;
                std::exception_ptr error;
            } sides[2];
            sides[0].floor = sides[1].floor = floor;
            std::atomic<std::size_t> claimed{0}, count{0};
            std::atomic<bool> stop{false};
#pragma omp parallel num_threads(2)
            {
                const int k = omp_get_thread_num();  // (a single thread, if that is all it gets, decides every group)
                Side& side = sides[k];
                Pass& pass = k == 0 ? forward : backward;
                const Search& search = k == 0 ? *this : *back;
                double cut = std::max(threshold, static_cast<double>(side.floor)) - margin;
                try {
                    while (!stop.load() && claimed.fetch_add(1) < n) {
                        if (timed && Clock::now() > deadline) side.status = KnapsackStatus::time_limit;
                        else if (!search.step(pass, threshold, cut, side.floor)) side.alive = false;
                        else if (count.fetch_add(pass.states.size()) + pass.states.size() > max_states)
                            side.status = KnapsackStatus::too_many_states;
                        side.states += pass.states.size();
                        side.peak = std::max(side.peak, pass.states.size());
                        if (side.status != KnapsackStatus::optimal || !side.alive) stop = true;
                    }
                } catch (...) {
                    side.error = std::current_exception();
                    stop = true;
                }
            }
            for (const Side& side : sides) {
                if (side.error) std::rethrow_exception(side.error);
                floor = std::max(floor, side.floor);
                result.states += side.states;
                result.peak_states = std::max(result.peak_states, side.peak);
                alive = alive && side.alive;
            }
            for (const Side& side : sides)
                if (side.status != KnapsackStatus::optimal) return side.status;
            return KnapsackStatus::optimal;
        }
#endif
        double cut = std::max(threshold, static_cast<double>(floor)) - margin;
        std::size_t count = 0;
        while (forward.done + backward.done < n) {
            if (timed && Clock::now() > deadline) return KnapsackStatus::time_limit;
            const bool backwards = back && backward.states.size() < forward.states.size();
            Pass& pass = backwards ? backward : forward;
            alive = (backwards ? *back : *this).step(pass, threshold, cut, floor);
            if (!alive) return KnapsackStatus::optimal;
            count += pass.states.size();
            result.states += pass.states.size();
            result.peak_states = std::max(result.peak_states, pass.states.size());
            if (count > max_states) return KnapsackStatus::too_many_states;
        }
        return KnapsackStatus::optimal;
    }

    // Keeps only states whose bound reaches threshold, or floor once that is higher: floor (a value some plan
    // reaches) rises to the best state within the rooms met on the way. On success writes the best complete
    // solution kept (if one is: found) to choices, its value to best, and whether a state on its path had a
    // tie in (value, tiebreak) dropped without the lexicographic rule (tie: another optimum may come first).
    // With `back` (two budgets), the passes meet in the middle (join).
    KnapsackStatus run(double threshold, std::size_t max_states, Clock::time_point deadline, KnapsackResult& result,
                       bool& found, bool& tie, i64& best, std::int32_t* choices, i64& floor, const Search* back) const {
        Pass forward = begin(), backward = back ? back->begin() : Pass{};
        found = false;
        bool alive = true;
        const KnapsackStatus status =
            advance(forward, back, backward, threshold, floor, max_states, deadline, result, alive);
        if (status != KnapsackStatus::optimal || !alive) return status;
        if (backward.done > 0) {
            join(forward, *back, backward, found, tie, best, choices);
            return KnapsackStatus::optimal;
        }
        // The best complete solution: one budget, the last kept (each beats all cheaper ones); two, the best.
        const std::vector<State>& states = forward.states;
        std::uint32_t at = static_cast<std::uint32_t>(states.size() - 1);
        for (std::uint32_t k = 0; two && k < states.size(); ++k) {
            const State &x = states[k], &y = states[at];
            const bool wins = x.value != y.value ? x.value > y.value
                              : x.tiebreak != y.tiebreak ? x.tiebreak > y.tiebreak
                                                         : lexicographic && x.lex > y.lex;
            if (wins) at = k;
        }
        best = states[at].value;
        for (std::uint32_t k = 0; two && !lexicographic && k < states.size(); ++k)  // equally good, other costs
            tie = tie || (k != at && states[k].value == best && states[k].tiebreak == states[at].tiebreak);
        tie = trace(forward, at, choices) || tie;
        found = true;
        return KnapsackStatus::optimal;
    }

    // Rounds with the threshold stepping down from the LP bound (steps doubling) to the value of the best
    // solution known (`floor`): a round whose best solution reaches its threshold has seen every solution at
    // least as good, so it holds the optimum. Near-optimal thresholds keep far fewer states than the floor.
    KnapsackStatus solve(i64 floor, std::size_t max_states, Clock::time_point deadline, KnapsackResult& result,
                         bool& tie, std::int32_t* choices, const Search* back) const {
        double err = 0;
        const double root = bound(bounds.front(), start.value, start.cost, start.cost2, 0, err);  // the LP bound
        const bool known = floor != std::numeric_limits<i64>::min();  // without a floor: steps from 2^-32 of the root
        const double gap = known ? std::max(root - static_cast<double>(floor), 0.0) : std::ldexp(std::fabs(root), -20);
        for (double step = std::max(gap / 4096.0, 1.0);; step *= 2.0) {
            const bool last = root - step <= static_cast<double>(floor);
            const double threshold = last ? static_cast<double>(floor) : root - step;
            bool found = false;
            i64 best = 0;
            tie = false;
            const KnapsackStatus status = run(threshold, max_states, deadline, result, found, tie, best, choices, floor, back);
            if (status != KnapsackStatus::optimal) return status;
            if (found && (last || static_cast<double>(best) >= threshold)) return status;
            if (last) {
                if (floor == std::numeric_limits<i64>::min()) return KnapsackStatus::infeasible;
                throw std::logic_error("internal error: the knapsack bound pruned every state");
            }
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

namespace {

// The value of the guide's greedy solution if it also meets the second room (else the lowest int64; with one
// budget, whose costs2 are all 0, it always does).
i64 value_within(const std::vector<std::vector<Item>>& items, const Reference& ref, i64 room2) {
    i64 value = 0, cost2 = 0;
    for (std::size_t g = 0; g < items.size(); ++g) {
        value += items[g][ref.filled[g]].value;
        cost2 += items[g][ref.filled[g]].cost2;
    }
    return cost2 <= room2 ? value : std::numeric_limits<i64>::min();
}

// The Lagrangian bound of the two-budget problem at mu: the guide's LP bound. Raises floor to the guide's
// greedy solution where that meets both rooms.
double lagrangian_bound(const std::vector<std::vector<Item>>& items, i64 room, i64 room2, double mu, i64& floor) {
    const Guide guide = guide_at(items, room, room2, mu);
    floor = std::max(floor, value_within(items, guide.ref, room2));
    return guide.bound;
}

// The multiplier of the second budget that makes the Lagrangian bound smallest (any mu >= 0 gives a valid
// bound; a good one keeps fewer states): powers of two first, then a golden-section search between the
// neighbours of the best. floor: the best value of a plan within both rooms met on the way.
double best_multiplier(const std::vector<std::vector<Item>>& items, i64 room, i64 room2, i64& floor) {
    double top = 0;  // a multiplier past which every group is best at its cheapest second cost
    for (const auto& group : items)
        for (const Item& a : group)
            for (const Item& b : group)
                if (b.cost2 > a.cost2 && b.value > a.value)
                    top = std::max(top, static_cast<double>(b.value - a.value) / static_cast<double>(b.cost2 - a.cost2));
    if (top == 0) return 0.0;
    double best_mu = 0, best = lagrangian_bound(items, room, room2, 0.0, floor);
    for (double mu = top; mu > top * 1e-15; mu *= 0.25) {
        const double b = lagrangian_bound(items, room, room2, mu, floor);
        if (b < best) best = b, best_mu = mu;
    }
    double lo = best_mu * 0.25, hi = best_mu == 0 ? top * 1e-15 : std::min(best_mu * 4, top);
    const double phi = 0.6180339887498949;
    for (int k = 0; k < 40; ++k) {
        const double a = hi - phi * (hi - lo), b = lo + phi * (hi - lo);
        if (lagrangian_bound(items, room, room2, a, floor) < lagrangian_bound(items, room, room2, b, floor)) hi = b;
        else lo = a;
    }
    const double mu = 0.5 * (lo + hi);
    return lagrangian_bound(items, room, room2, mu, floor) < best ? mu : best_mu;
}

KnapsackResult solve_any(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* costs2,
                         const std::int64_t* tiebreaks, const std::int64_t* offsets, std::size_t num_groups,
                         std::int64_t capacity, std::int64_t capacity2, std::size_t max_states, double time_limit_s,
                         std::int32_t* choices) {
    const auto deadline = time_limit_s > 0 ? Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(time_limit_s))
                                           : Clock::time_point::max();
    const bool two = costs2 != nullptr;
    if (num_groups == 0) throw std::invalid_argument("no groups: give at least one");
    if (offsets[0] != 0) throw std::invalid_argument("offsets[0] must be 0");
    if (capacity < 0 || capacity2 < 0) throw std::invalid_argument("capacity must be >= 0");
    max_states = std::min<std::size_t>(max_states, std::numeric_limits<std::uint32_t>::max());

    // Items with costs reduced by their group's cheapest; the reduced capacities.
    std::vector<std::vector<Item>> items(num_groups);
    i64 cheapest_total = 0, cheapest2_total = 0, value_total = 0, tiebreak_total = 0, cost_total = 0, cost2_total = 0;
    i64 range_total = 0;
    for (std::size_t g = 0; g < num_groups; ++g) {
        const i64 begin = offsets[g], end = offsets[g + 1];
        if (end <= begin) throw std::invalid_argument("group " + std::to_string(g) + " has no choices");
        if (end - begin > std::numeric_limits<std::int32_t>::max())
            throw std::invalid_argument("group " + std::to_string(g) + " has too many choices");
        i64 cheapest = std::numeric_limits<i64>::max(), cheapest2 = cheapest, top_value = 0, top_tiebreak = 0,
            top_cost = 0, top_cost2 = 0;
        i64 low = std::numeric_limits<i64>::max(), high = std::numeric_limits<i64>::min();
        for (i64 i = begin; i < end; ++i) {
            const i64 c2 = two ? costs2[i] : 0;
            if (costs[i] < 0 || c2 < 0 || tiebreaks[i] < 0)
                throw std::invalid_argument("costs and tiebreaks must be >= 0");
            if (values[i] < -kSumLimit || values[i] > kSumLimit)
                throw std::invalid_argument("a value's magnitude exceeds 2^62; express it in coarser units");
            cheapest = std::min(cheapest, costs[i]);
            cheapest2 = std::min(cheapest2, c2);
            top_value = std::max(top_value, values[i] < 0 ? -values[i] : values[i]);
            low = std::min(low, values[i]);
            high = std::max(high, values[i]);
            top_tiebreak = std::max(top_tiebreak, tiebreaks[i]);
            top_cost = std::max(top_cost, costs[i]);
            top_cost2 = std::max(top_cost2, c2);
        }
        check_sum(value_total, top_value, "absolute value");
        // Differences of values (hull edges) must stay in int64: the group's range, taken in unsigned arithmetic.
        const std::uint64_t range = static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low);
        if (range > static_cast<std::uint64_t>(kSumLimit - range_total))
            throw std::invalid_argument("the sum over the groups of their value ranges (largest minus smallest) "
                                        "exceeds 2^62; express the values in coarser units");
        range_total += static_cast<i64>(range);
        check_sum(tiebreak_total, top_tiebreak, "tiebreak");
        check_sum(cost_total, top_cost, "cost");
        check_sum(cost2_total, top_cost2, "second cost");
        cheapest_total += cheapest;  // <= cost_total
        cheapest2_total += cheapest2;
        for (i64 i = begin; i < end; ++i)
            items[g].push_back({costs[i] - cheapest, values[i], tiebreaks[i], static_cast<std::int32_t>(i - begin),
                                (two ? costs2[i] : 0) - cheapest2});
    }
    KnapsackResult result;
    if (cheapest_total > capacity || cheapest2_total > capacity2) return result;  // infeasible
    i64 room = std::min(capacity - cheapest_total, cost_total);  // more room than all costs changes nothing
    i64 room2 = std::min(capacity2 - cheapest2_total, cost2_total);
    // A choice that alone costs more than a room can never be taken. With two budgets dropping it may drop a
    // group's cheapest under the other budget: costs are reduced again and the rooms shrink, until nothing
    // changes (every group keeps a choice of cost 0 under each budget, which the bounds rely on).
    for (bool changed = true; changed;) {
        changed = false;
        for (auto& group : items) {
            const std::size_t before = group.size();
            group.erase(std::remove_if(group.begin(), group.end(),
                                       [&](const Item& it) { return it.cost > room || it.cost2 > room2; }),
                        group.end());
            if (group.empty()) return result;  // infeasible
            i64 least = std::numeric_limits<i64>::max(), least2 = least;
            for (const Item& it : group) least = std::min(least, it.cost), least2 = std::min(least2, it.cost2);
            for (Item& it : group) it.cost -= least, it.cost2 -= least2;
            room -= least;
            room2 -= least2;
            if (room < 0 || room2 < 0) return result;  // infeasible
            changed = changed || group.size() != before || least > 0 || least2 > 0;
        }
    }

    // A value some plan within both budgets reaches: the best greedy solution of a guide problem (at any
    // multiplier tried) that meets the second budget, else none (then the last round keeps every state).
    i64 floor = std::numeric_limits<i64>::min();
    const double mu = two ? best_multiplier(items, room, room2, floor) : 0.0;
    const Guide guide = guide_at(items, room, room2, mu);
    const Reference& ref = guide.ref;
    floor = std::max(floor, value_within(items, ref, room2));

    // First the groups that can take the largest share of the rooms (their dearest choice's cost over the
    // room, summed over the budgets): deciding them early leaves the many small groups to states whose curves bound them
    // tightly (docs/KERNELS.md; closest-to-the-multiplier first kept up to 6x more states on network-shaped
    // instances). Ties in (value, tiebreak) met there are broken again by a run in the natural order, which
    // ranks the choices lexicographically.
    std::vector<std::size_t> order(num_groups);
    std::vector<double> share(num_groups, 0.0);
    for (std::size_t g = 0; g < num_groups; ++g) {
        order[g] = g;
        for (const Item& it : items[g])
            share[g] = std::max(share[g], static_cast<double>(it.cost) / static_cast<double>(room + 1) +
                                              static_cast<double>(it.cost2) / static_cast<double>(room2 + 1));
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return share[a] > share[b]; });
    const double value_scale = static_cast<double>(value_total);
    // Two budgets: second opinions on the bound at other multipliers (each valid; a state goes when any rules
    // it out), for states that stray from the second room, where the one multiplier's bound is weak.
    std::vector<Guide> others;
    if (two)
        for (double other : {0.0, 0.25 * mu, 0.5 * mu, 0.8 * mu, 1.25 * mu, 2.0 * mu, 4.0 * mu})
            if (other != mu) others.push_back(guide_at(items, room, room2, other));
    bool tie = false;
    auto search = [&](bool lexicographic) {
        Search dp(items, guide, room, room2, two, order, lexicographic, value_scale);
        for (const Guide& other : others) dp.add(other);
        if (!two || lexicographic) return dp.solve(floor, max_states, deadline, result, tie, choices, nullptr);
        Search back(items, guide, room, room2, two, {order.rbegin(), order.rend()}, false, value_scale);
        for (const Guide& other : others) back.add(other);
        return dp.solve(floor, max_states, deadline, result, tie, choices, &back);
    };
    KnapsackStatus status = search(false);
    if (status == KnapsackStatus::optimal && tie) {
        for (std::size_t g = 0; g < num_groups; ++g) order[g] = g;
        status = search(true);
    }
    result.status = status;
    return result;
}

}  // namespace

KnapsackResult solve_knapsack(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* tiebreaks,
                              const std::int64_t* offsets, std::size_t num_groups, std::int64_t capacity,
                              std::size_t max_states, double time_limit_s, std::int32_t* choices) {
    return solve_any(values, costs, nullptr, tiebreaks, offsets, num_groups, capacity, 0, max_states, time_limit_s,
                     choices);
}

KnapsackResult solve_knapsack2(const std::int64_t* values, const std::int64_t* costs, const std::int64_t* costs2,
                               const std::int64_t* tiebreaks, const std::int64_t* offsets, std::size_t num_groups,
                               std::int64_t capacity, std::int64_t capacity2, std::size_t max_states,
                               double time_limit_s, std::int32_t* choices) {
    return solve_any(values, costs, costs2, tiebreaks, offsets, num_groups, capacity, capacity2, max_states,
                     time_limit_s, choices);
}

}  // namespace ompq
