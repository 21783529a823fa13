// Centring of Gram matrices and the ORM (linear CKA) matrix from one product.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "ompq/checked.hpp"
#include "ompq/orthogonality.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ompq {
namespace {

// K̃ = H K H: subtract row and column means, add back the grand mean.
void center_biased(const double* k, std::size_t n, double* out) {
    std::vector<double> row_mean(n, 0.0), col_mean(n, 0.0);
    double grand = 0.0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            row_mean[i] += k[i * n + j];
            col_mean[j] += k[i * n + j];
        }
    for (std::size_t i = 0; i < n; ++i) {
        grand += row_mean[i];
        row_mean[i] /= static_cast<double>(n);
        col_mean[i] /= static_cast<double>(n);
    }
    grand /= static_cast<double>(n) * static_cast<double>(n);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) out[i * n + j] = k[i * n + j] - row_mean[i] - col_mean[j] + grand;
}

// U-centring (Székely & Rizzo 2014): with a zero diagonal, row sums s and total S,
// Ũ_ij = K_ij − s_i/(n−2) − s_j/(n−2) + S/((n−1)(n−2)) off the diagonal, 0 on it.
// ⟨Ũ_K, Ũ_L⟩ / (n(n−3)) is the unbiased HSIC estimator of Song et al. (2012).
void center_unbiased(const double* k, std::size_t n, double* out) {
    std::vector<double> row_sum(n, 0.0), col_sum(n, 0.0);
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            if (i != j) {
                row_sum[i] += k[i * n + j];
                col_sum[j] += k[i * n + j];
                total += k[i * n + j];
            }
    const double nd = static_cast<double>(n);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            out[i * n + j] = i == j ? 0.0
                                    : k[i * n + j] - row_sum[i] / (nd - 2) - col_sum[j] / (nd - 2) +
                                          total / ((nd - 1) * (nd - 2));
}

}  // namespace

void center_gram(const double* k, std::size_t n, Estimator estimator, double* out) {
    if (k == nullptr || out == nullptr) throw std::invalid_argument("center_gram: null pointer");
    if (estimator == Estimator::biased) {
        if (n < 2) throw std::invalid_argument("center_gram: the biased estimator needs n >= 2 samples");
        center_biased(k, n, out);
    } else {
        if (n < 4) throw std::invalid_argument("center_gram: the unbiased estimator needs n >= 4 samples");
        center_unbiased(k, n, out);
    }
}

void orm_matrix(const double* grams, std::size_t num_layers, std::size_t n, Estimator estimator,
                double* orm, int num_threads) {
    if (grams == nullptr || orm == nullptr) throw std::invalid_argument("orm_matrix: null pointer");
    if (num_layers == 0) throw std::invalid_argument("orm_matrix: no layers");
    const std::size_t nn = checked_mul(n, n, "orm_matrix");
    checked_mul(num_layers, nn, "orm_matrix");
    const long L = static_cast<long>(num_layers);
    // A NaN or Inf would make the whole matrix NaN, indistinguishable from a Gram that centres to zero.
    for (std::size_t e = 0; e < num_layers * nn; ++e)
        if (!std::isfinite(grams[e]))
            throw std::invalid_argument("orm_matrix: the Gram of layer " + std::to_string(e / nn) + " holds " +
                                        (std::isnan(grams[e]) ? "a NaN" : "an infinite") + " entry at (" +
                                        std::to_string(e % nn / n) + ", " + std::to_string(e % n) +
                                        "); the Grams must be finite");

    // G: the centred Grams flattened to an L × n² matrix.
    std::vector<double> g(num_layers * nn);
    std::vector<double> raw_norm2(num_layers, 0.0);
    for (std::size_t l = 0; l < num_layers; ++l) {
        center_gram(grams + l * nn, n, estimator, g.data() + l * nn);
        for (std::size_t e = 0; e < nn; ++e) raw_norm2[l] += grams[l * nn + e] * grams[l * nn + e];
    }

    // P = G Gᵀ, upper triangle; rows of G are long, so each entry is one dot product.
    std::vector<double> p(num_layers * num_layers, 0.0);
    int threads = 1;
#ifdef _OPENMP
    threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    if (static_cast<double>(num_layers) * num_layers * nn < 67108864.0) threads = 1;  // as in gram.cpp
    threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), num_layers));
#else
    (void)num_threads;
#endif
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (long i = 0; i < L; ++i) {
        const double* gi = g.data() + i * nn;
        for (long j = i; j < L; ++j) {
            const double* gj = g.data() + j * nn;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (std::size_t e = 0; e < nn; ++e) s += gi[e] * gj[e];
            p[i * L + j] = s;
        }
    }

    // Normalise by the norms on the diagonal. A centred Gram that is zero up to
    // rounding (relative to the raw Gram) has no direction: NaN marks it.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<bool> degenerate(num_layers);
    for (long i = 0; i < L; ++i)
        degenerate[i] = !(p[i * L + i] > 1e-18 * raw_norm2[i]) || !std::isfinite(p[i * L + i]);
    for (long i = 0; i < L; ++i)
        for (long j = i; j < L; ++j) {
            double v;
            if (degenerate[i] || degenerate[j]) v = nan;
            else if (i == j) v = 1.0;
            else v = p[i * L + j] / std::sqrt(p[i * L + i] * p[j * L + j]);
            orm[i * L + j] = v;
            orm[j * L + i] = v;
        }
}

}  // namespace ompq
