// Orthogonality (ORM) matrix of L layers from their n × n Gram matrices.
//
// ORM(i, j) is linear CKA: the cosine of the centred Grams under the Frobenius
// inner product. All L × L entries come from one product G Gᵀ of the centred
// Grams flattened to an L × n² matrix G.
#pragma once

#include <cstddef>

namespace ompq {

enum class Estimator {
    biased,    // K̃ = H K H, H = I − 11ᵀ/n (Kornblith et al. 2019); needs n >= 2
    unbiased,  // U-centred K (zero diagonal), the unbiased HSIC estimator (Song et al. 2012); needs n >= 4
};

// Writes the centred form of the n × n Gram k into out (n × n, may alias k).
void center_gram(const double* k, std::size_t n, Estimator estimator, double* out);

// grams: L consecutive n × n row-major Gram matrices. orm: L × L output.
// A layer whose centred Gram is zero (features equal for every sample) has no
// defined CKA: its row and column are set to NaN for the caller to report.
// A Gram with a NaN or infinite entry is refused (std::invalid_argument naming the layer and entry).
void orm_matrix(const double* grams, std::size_t num_layers, std::size_t n, Estimator estimator,
                double* orm, int num_threads = 0);

}  // namespace ompq
