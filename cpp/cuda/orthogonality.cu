// The ORM (linear CKA) matrix on the device from L Grams already there: the three steps of
// cpp/src/orthogonality.cpp, each in a fixed order (no atomics), so the result is reproducible.
//  1. centre: one block per layer; row and column sums (one thread per row, in column order),
//     the centred Gram G_l, and the raw Gram's squared norm (a fixed tree over the block);
//  2. P = G Gᵀ, upper triangle: one block per pair of layers, a fixed tree over the block;
//  3. normalise: one thread per entry, NaN for a layer whose centred Gram is zero up to rounding.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "ompq/checked.hpp"
#include "ompq/cuda.hpp"
#include "block_sum.cuh"
#include "upper_pairs.cuh"

namespace ompq::cuda {
namespace {

constexpr int kThreads = 256;

// Biased: K̃ = K − row means − column means + grand mean (H K H). Unbiased (U-centring): with the
// diagonal left out of the sums, K̃_ij = K_ij − s_i/(n−2) − t_j/(n−2) + S/((n−1)(n−2)), 0 on the diagonal.
// means: [L][2n] workspace for the per-row and per-column terms.
__global__ void __launch_bounds__(kThreads) center(const double* __restrict__ grams, int n, bool unbiased,
                                                   double* __restrict__ centred, double* __restrict__ means,
                                                   double* __restrict__ raw_norm2) {
    __shared__ double shared[kThreads];
    __shared__ double grand;
    const long long nn = static_cast<long long>(n) * n;
    const double* k = grams + blockIdx.x * nn;
    double* out = centred + blockIdx.x * nn;
    double* row = means + blockIdx.x * 2LL * n;
    double* col = row + n;
    const double nd = n;
    const double divisor = unbiased ? nd - 2 : nd;
    for (int i = threadIdx.x; i < n; i += kThreads) {
        double r = 0.0, c = 0.0;
        for (int j = 0; j < n; ++j) {
            if (unbiased && j == i) continue;
            r += k[static_cast<long long>(i) * n + j];
            c += k[static_cast<long long>(j) * n + i];
        }
        row[i] = r;
        col[i] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int i = 0; i < n; ++i) total += row[i];
        grand = unbiased ? total / ((nd - 1) * (nd - 2)) : total / (nd * nd);
    }
    __syncthreads();
    double norm2 = 0.0;
    for (long long e = threadIdx.x; e < nn; e += kThreads) {
        const int i = static_cast<int>(e / n), j = static_cast<int>(e % n);
        const double v = k[e];
        norm2 += v * v;
        out[e] = (unbiased && i == j) ? 0.0 : v - row[i] / divisor - col[j] / divisor + grand;
    }
    const double sum = block_sum<kThreads>(norm2, shared);
    if (threadIdx.x == 0) raw_norm2[blockIdx.x] = sum;
}

// p[i][j] = <G_i, G_j> for the upper-triangle pair of this block.
__global__ void __launch_bounds__(kThreads) pair_products(const double* __restrict__ centred, int layers,
                                                          long long nn, double* __restrict__ p) {
    __shared__ double shared[kThreads];
    int i, j;
    upper_pair(blockIdx.x, layers, &i, &j);
    const double* gi = centred + i * nn;
    const double* gj = centred + j * nn;
    double s = 0.0;
    for (long long e = threadIdx.x; e < nn; e += kThreads) s += gi[e] * gj[e];
    const double sum = block_sum<kThreads>(s, shared);
    if (threadIdx.x == 0) p[static_cast<long long>(i) * layers + j] = sum;
}

__device__ bool degenerate(const double* p, const double* raw_norm2, int layers, int i) {
    const double d = p[static_cast<long long>(i) * layers + i];
    return !(d > 1e-18 * raw_norm2[i]) || !isfinite(d);
}

__global__ void normalise(const double* __restrict__ p, const double* __restrict__ raw_norm2, int layers,
                          double* __restrict__ orm) {
    const long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (e >= static_cast<long long>(layers) * layers) return;
    const int i = static_cast<int>(e / layers), j = static_cast<int>(e % layers);
    const int lo = min(i, j), hi = max(i, j);  // read the upper triangle: the matrix is symmetric bit for bit
    double v;
    if (degenerate(p, raw_norm2, layers, i) || degenerate(p, raw_norm2, layers, j))
        v = nan("");
    else if (i == j)
        v = 1.0;
    else
        v = p[static_cast<long long>(lo) * layers + hi] /
            sqrt(p[static_cast<long long>(lo) * layers + lo] * p[static_cast<long long>(hi) * layers + hi]);
    orm[e] = v;
}

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

// The workspace: centred Grams [L][n][n], row/column sums [L][2n], raw norms [L], P [L][L].
struct Workspace {
    double* centred;
    double* means;
    double* raw_norm2;
    double* p;
    Workspace(void* base, std::size_t layers, std::size_t n) {
        centred = static_cast<double*>(base);
        means = centred + layers * n * n;
        raw_norm2 = means + layers * 2 * n;
        p = raw_norm2 + layers;
    }
};

}  // namespace

std::size_t orm_workspace_bytes(std::size_t num_layers, std::size_t n) {
    const char* what = "orm_workspace_bytes";
    const std::size_t grams = checked_mul(num_layers, checked_mul(n, n, what), what);
    const std::size_t sums = checked_mul(num_layers, checked_mul(2, n, what), what);
    const std::size_t pairs = checked_mul(num_layers, num_layers, what);
    const std::size_t doubles = checked_add(checked_add(grams, sums, what), checked_add(num_layers, pairs, what), what);
    return checked_mul(doubles, sizeof(double), what);
}

void orm_matrix(const double* grams, std::size_t num_layers, std::size_t n, Estimator estimator, double* orm,
                void* workspace, std::size_t workspace_bytes, void* stream) {
    if (grams == nullptr || orm == nullptr || workspace == nullptr)
        throw std::invalid_argument("orm_matrix: null pointer");
    if (num_layers == 0) throw std::invalid_argument("orm_matrix: no layers");
    const bool unbiased = estimator == Estimator::unbiased;
    if (!unbiased && n < 2) throw std::invalid_argument("orm_matrix: the biased estimator needs n >= 2 samples");
    if (unbiased && n < 4) throw std::invalid_argument("orm_matrix: the unbiased estimator needs n >= 4 samples");
    if (num_layers > 65535 || n > 46340) throw std::invalid_argument("orm_matrix: at most 65535 layers of 46340 samples");
    if (workspace_bytes < orm_workspace_bytes(num_layers, n)) throw std::invalid_argument("workspace too small");
    const Workspace w(workspace, num_layers, n);
    auto s = static_cast<cudaStream_t>(stream);
    const int layers = static_cast<int>(num_layers);
    const auto nn = static_cast<long long>(n) * static_cast<long long>(n);
    center<<<layers, kThreads, 0, s>>>(grams, static_cast<int>(n), unbiased, w.centred, w.means, w.raw_norm2);
    check(cudaGetLastError(), "ORM centring launch");
    const long long pairs = static_cast<long long>(layers) * (layers + 1) / 2;
    pair_products<<<static_cast<unsigned>(pairs), kThreads, 0, s>>>(w.centred, layers, nn, w.p);
    check(cudaGetLastError(), "ORM product launch");
    const long long entries = static_cast<long long>(layers) * layers;
    normalise<<<static_cast<unsigned>((entries + kThreads - 1) / kThreads), kThreads, 0, s>>>(w.p, w.raw_norm2, layers,
                                                                                                orm);
    check(cudaGetLastError(), "ORM normalisation launch");
}

}  // namespace ompq::cuda
