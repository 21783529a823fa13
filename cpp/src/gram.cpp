// Gram accumulation driver: splits X into column chunks that stay in cache,
// runs the widest tile kernel this CPU has over the upper-triangle 4 × 4 tiles
// of each chunk, and adds every chunk's float32 tile sums to K in float64.
//
// Threads work on fixed slabs of chunks with no barrier between chunks; the
// slab sums are added in a fixed order, so results are bit-for-bit the same
// whatever the thread count.
#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu_features.hpp"
#include "gram_kernels.hpp"
#include "ompq/gram.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ompq {
namespace {

std::size_t element_size(DType dtype) {
    switch (dtype) {
        case DType::f32: return 4;
        case DType::f16:
        case DType::bf16: return 2;
        case DType::f64: return 8;
    }
    throw std::invalid_argument("unknown dtype");
}

detail::TileKernel pick_kernel(DType dtype, Isa isa) {
    detail::TileKernel kernel = nullptr;
#if defined(OMPQ_HAVE_X86_KERNELS)
    if (isa == Isa::avx512) kernel = detail::avx512_tile_kernel(dtype, detail::cpu_features().avx512_bf16);
    if (isa == Isa::avx2) kernel = detail::avx2_tile_kernel(dtype);
#else
    (void)isa;
#endif
    return kernel ? kernel : detail::generic_tile_kernel(dtype);
}

// Columns per chunk: all n rows of a chunk should fit in about 512 KiB of cache.
std::size_t chunk_columns(std::size_t n, std::size_t bytes_per_element) {
    const std::size_t budget = std::size_t{512} << 10;
    std::size_t cols = budget / (n * bytes_per_element);
    cols = std::clamp<std::size_t>(cols, 256, 4096);
    return cols - cols % 32;
}

}  // namespace

void gram_accumulate(const void* x, DType dtype, std::size_t n, std::size_t d, std::size_t row_stride,
                     double* k, const GramOptions& options) {
    if (x == nullptr || k == nullptr) throw std::invalid_argument("gram_accumulate: null pointer");
    if (n == 0) throw std::invalid_argument("gram_accumulate: n (number of samples) must be positive");
    if (row_stride < d) throw std::invalid_argument("gram_accumulate: row_stride must be >= d");
    if (d == 0) return;
    const std::size_t esize = element_size(dtype);
    const detail::TileKernel kernel = pick_kernel(dtype, detail::resolve_isa(options.isa));
    const auto* base = static_cast<const unsigned char*>(x);

    const std::size_t blocks = (n + 3) / 4;
    std::vector<std::pair<std::size_t, std::size_t>> tiles;  // (row block, column block), row <= column
    for (std::size_t i = 0; i < blocks; ++i)
        for (std::size_t j = i; j < blocks; ++j) tiles.emplace_back(i, j);
    const std::size_t chunk = chunk_columns(n, esize);

    int threads = 1;
#ifdef _OPENMP
    threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
    // Below ~2^26 multiply-adds (about a millisecond on one core) a parallel region does not
    // pay, and on a busy machine waiting for a descheduled worker costs a time slice.
    if (static_cast<double>(n) * n * d < 67108864.0) threads = 1;
#endif
    // Fixed slabs of consecutive chunks, each summed into its own buffer and the
    // buffers added in slab order: the result is the same for any thread count,
    // and threads take slabs dynamically, so a descheduled thread stalls no one.
    const std::size_t num_chunks = (d + chunk - 1) / chunk;
    // At most 16 slabs, and their buffers within 64 MiB (for very many samples).
    const std::size_t slab_cap = std::max<std::size_t>(1, (std::size_t{64} << 20) / (n * n * sizeof(double)));
    const std::size_t num_slabs = std::min({num_chunks, std::size_t{16}, slab_cap});
    threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), num_slabs));
    std::vector<double> slabs(num_slabs * n * n, 0.0);  // upper triangles only
    const long num_tiles = static_cast<long>(tiles.size());

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long s = 0; s < static_cast<long>(num_slabs); ++s) {
        double* acc = slabs.data() + s * n * n;
        double sums[16];
        const std::size_t first = s * num_chunks / num_slabs, last = (s + 1) * num_chunks / num_slabs;
        for (std::size_t c = first; c < last; ++c) {
            const std::size_t k0 = c * chunk, len = std::min(chunk, d - k0);
            for (long t = 0; t < num_tiles; ++t) {
                const std::size_t i0 = 4 * tiles[t].first, j0 = 4 * tiles[t].second;
                // Rows past the end repeat the last row; their sums are discarded.
                const void* a[4];
                const void* b[4];
                for (std::size_t r = 0; r < 4; ++r) {
                    a[r] = base + (std::min(i0 + r, n - 1) * row_stride + k0) * esize;
                    b[r] = base + (std::min(j0 + r, n - 1) * row_stride + k0) * esize;
                }
                kernel(a, b, len, sums);
                for (std::size_t r = 0; r < 4; ++r)
                    for (std::size_t q = 0; q < 4; ++q) {
                        const std::size_t i = i0 + r, j = j0 + q;
                        if (j < n && i <= j) acc[i * n + j] += sums[4 * r + q];
                    }
            }
        }
    }
    std::vector<double> upper(n * n, 0.0);
    double* inc = upper.data();
    for (std::size_t s = 0; s < num_slabs; ++s)
        for (std::size_t e = 0; e < n * n; ++e) inc[e] += slabs[s * n * n + e];
    for (std::size_t i = 0; i < n; ++i) {
        k[i * n + i] += inc[i * n + i];
        for (std::size_t j = i + 1; j < n; ++j) {
            k[i * n + j] += inc[i * n + j];
            k[j * n + i] += inc[i * n + j];
        }
    }
}

std::vector<std::string> available_isas() {
    const detail::CpuFeatures& f = detail::cpu_features();
    std::vector<std::string> out{"generic"};
    if (f.avx2) out.emplace_back("avx2");
    if (f.avx512) out.emplace_back("avx512");
    return out;
}

std::string best_isa() {
    switch (detail::resolve_isa(Isa::best)) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

}  // namespace ompq
