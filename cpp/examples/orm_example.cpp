// Links the ompq core without Python: builds features for three "layers" of
// 16 samples, accumulates their Grams in two feature chunks, and prints the
// ORM matrix. Layer 1 is a scaled copy of layer 0, so ORM(0, 1) must be 1.
// Layer 2 is rank one (sample i is u_i times one direction) while layer 0 is
// near-isotropic noise, so their CKA is about 1/sqrt(n - 1). The program checks
// both and exits non-zero if the core disagrees. Then it allocates bits to the three
// layers under a size budget with the exact knapsack and checks the plan against
// every combination.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <random>
#include <vector>

#include "ompq/ompq.hpp"

int main() {
    const std::size_t n = 16, d = 1000, layers = 3;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    std::vector<float> base(n * d), other(n * d);
    for (auto& v : base) v = normal(rng);
    std::vector<float> u(n), w(d);
    for (auto& v : u) v = normal(rng);
    for (auto& v : w) v = normal(rng);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t e = 0; e < d; ++e) other[i * d + e] = u[i] * w[e];

    std::vector<double> grams(layers * n * n, 0.0);
    for (std::size_t l = 0; l < layers; ++l) {
        std::vector<float> x(n * d);
        for (std::size_t e = 0; e < n * d; ++e) x[e] = l == 0 ? base[e] : l == 1 ? 3.0f * base[e] : other[e];
        // Grams are additive over feature chunks: accumulate two halves of the columns.
        double* k = grams.data() + l * n * n;
        ompq::gram_accumulate(x.data(), ompq::DType::f32, n, d / 2, d, k);
        ompq::gram_accumulate(x.data() + d / 2, ompq::DType::f32, n, d - d / 2, d, k);
    }
    std::vector<double> orm(layers * layers);
    ompq::orm_matrix(grams.data(), layers, n, ompq::Estimator::biased, orm.data());

    std::printf("ompq %s, kernels: %s\nORM matrix:\n", ompq::version, ompq::best_isa().c_str());
    for (std::size_t i = 0; i < layers; ++i) {
        for (std::size_t j = 0; j < layers; ++j) std::printf(" %.6f", orm[i * layers + j]);
        std::printf("\n");
    }
    bool ok = std::fabs(orm[1] - 1.0) < 1e-9 && orm[2] < 0.5 && orm[0] == 1.0;

    // Bits 2..8 for each layer: a layer less similar to the others is worth more per bit (weight 1 - mean
    // ORM to the others, scaled to integers); the size budget is 4 bits per weight on average.
    const std::int64_t params[layers] = {4000, 1000, 2500};
    std::vector<std::int64_t> values, costs, offsets{0};
    std::int64_t capacity = 0;
    for (std::size_t l = 0; l < layers; ++l) {
        double similar = 0;
        for (std::size_t j = 0; j < layers; ++j) similar += j == l ? 0.0 : orm[l * layers + j] / (layers - 1);
        for (std::int64_t b = 2; b <= 8; ++b) {
            values.push_back(std::llround((1.0 - similar) * 1e6) * b);
            costs.push_back(params[l] * b);
        }
        offsets.push_back(static_cast<std::int64_t>(values.size()));
        capacity += 4 * params[l];
    }
    std::vector<std::int32_t> picks(layers);
    const ompq::KnapsackResult r = ompq::solve_knapsack(values.data(), costs.data(), costs.data(), offsets.data(),
                                                        layers, capacity, 1u << 20, 0.0, picks.data());
    std::int64_t best = -1;  // the best objective over all 7^3 plans within the budget
    for (int a = 0; a < 7; ++a)
        for (int b = 0; b < 7; ++b)
            for (int c = 0; c < 7; ++c)
                if (costs[a] + costs[7 + b] + costs[14 + c] <= capacity)
                    best = std::max(best, values[a] + values[7 + b] + values[14 + c]);
    const std::int64_t got = values[picks[0]] + values[7 + picks[1]] + values[14 + picks[2]];
    std::printf("bits under a %lld-bit budget: %d %d %d\n", static_cast<long long>(capacity), picks[0] + 2,
                picks[1] + 2, picks[2] + 2);
    ok = ok && r.status == ompq::KnapsackStatus::optimal && got == best;
    std::printf(ok ? "check passed\n" : "check FAILED\n");
    return ok ? 0 : 1;
}
