// Links the ompq core without Python: builds features for three "layers" of
// 16 samples, accumulates their Grams in two feature chunks, and prints the
// ORM matrix. Layer 1 is a scaled copy of layer 0, so ORM(0, 1) must be 1.
// Layer 2 is rank one (sample i is u_i times one direction) while layer 0 is
// near-isotropic noise, so their CKA is about 1/sqrt(n - 1). The program checks
// both and exits non-zero if the core disagrees.
#include <cmath>
#include <cstdio>
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
    const bool ok = std::fabs(orm[1] - 1.0) < 1e-9 && orm[2] < 0.5 && orm[0] == 1.0;
    std::printf(ok ? "check passed\n" : "check FAILED\n");
    return ok ? 0 : 1;
}
