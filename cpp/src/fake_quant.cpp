// Fake-quant driver: checks the arguments, cuts the tensor into blocks of at
// most kBlock elements inside each [outer][channel] row, runs the row kernels
// of the widest instruction set on the blocks in parallel, and adds the LSQ
// partial sums of every block in a fixed order.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.hpp"
#include "fake_quant_kernels.hpp"
#include "ompq/fake_quant.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ompq {
namespace {

constexpr std::size_t kBlock = 8192;  // elements per block: the unit of parallel work and of the LSQ partial sums

detail::FakeQuantKernels pick(Isa isa) {
#if defined(OMPQ_HAVE_X86_KERNELS)
    switch (detail::resolve_isa(isa)) {
        case Isa::avx512: return detail::avx512::kernels();
        case Isa::avx2: return detail::avx2::kernels();
        default: break;
    }
#else
    detail::resolve_isa(isa);
#endif
    return detail::generic::kernels();
}

void check(const QuantLayout& layout, const float* scale, const float* zero_point, QuantRange range) {
    if (layout.channels == 0) throw std::invalid_argument("fake_quant: the layout has no channels");
    if (range.qmin > range.qmax)
        throw std::invalid_argument("fake_quant: qmin (" + std::to_string(range.qmin) + ") > qmax (" +
                                    std::to_string(range.qmax) + ")");
    if (range.qmin < -(1L << 16) || range.qmax > (1L << 16))
        throw std::invalid_argument("fake_quant: the integer range must lie within +-65536 (at most 16 bits)");
    for (std::size_t c = 0; c < layout.channels; ++c) {
        if (!(scale[c] > 0.0f) || !std::isfinite(scale[c]) || !std::isfinite(1.0f / scale[c]))
            throw std::invalid_argument("fake_quant: scale[" + std::to_string(c) + "] = " + std::to_string(scale[c]) +
                                        " must be positive and finite (with a finite inverse)");
        const float z = zero_point[c];
        if (z != std::nearbyint(z) || z < static_cast<float>(range.qmin) || z > static_cast<float>(range.qmax))
            throw std::invalid_argument("fake_quant: zero_point[" + std::to_string(c) + "] = " + std::to_string(z) +
                                        " must be a whole number inside [qmin, qmax]");
    }
}

struct Block {
    std::size_t row, begin, len;
};

std::vector<Block> blocks_of(const QuantLayout& layout) {
    std::vector<Block> blocks;
    const std::size_t rows = layout.outer * layout.channels;
    const std::size_t per_row = (layout.inner + kBlock - 1) / kBlock;
    blocks.reserve(rows * per_row);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t b = 0; b < layout.inner; b += kBlock) blocks.push_back({r, b, std::min(kBlock, layout.inner - b)});
    return blocks;
}

int thread_count(int requested, std::size_t elements, std::size_t work_items) {
    int threads = 1;
#ifdef _OPENMP
    threads = requested > 0 ? requested : omp_get_max_threads();
    // Below ~1M elements (a fraction of a millisecond on one core) a parallel region does
    // not pay: on a machine whose other cores are busy, waiting for a descheduled
    // worker costs a whole scheduler time slice.
    if (elements < (std::size_t{1} << 20)) threads = 1;
#else
    (void)requested;
    (void)elements;
#endif
    return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), std::max<std::size_t>(work_items, 1)));
}

}  // namespace

void fake_quant_forward(const float* x, float* y, const QuantLayout& layout, const float* scale,
                        const float* zero_point, QuantRange range, const FakeQuantOptions& options) {
    if (x == nullptr || y == nullptr || scale == nullptr || zero_point == nullptr)
        throw std::invalid_argument("fake_quant_forward: null pointer");
    check(layout, scale, zero_point, range);
    const auto kernels = pick(options.isa);
    const std::vector<Block> blocks = blocks_of(layout);
    const long count = static_cast<long>(blocks.size());
    const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
#pragma omp parallel for schedule(dynamic, 4) num_threads(thread_count(options.num_threads, layout.size(), blocks.size()))
    for (long i = 0; i < count; ++i) {
        const Block& b = blocks[i];
        const std::size_t c = b.row % layout.channels, offset = b.row * layout.inner + b.begin;
        kernels.forward_row(x + offset, y + offset, b.len, scale[c], zero_point[c], qmin, qmax);
    }
}

void fake_quant_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& layout, const float* scale, const float* zero_point, QuantRange range,
                         float grad_factor, const FakeQuantOptions& options) {
    if (x == nullptr || gy == nullptr || gx == nullptr || scale == nullptr || zero_point == nullptr)
        throw std::invalid_argument("fake_quant_backward: null pointer");
    if (!std::isfinite(grad_factor)) throw std::invalid_argument("fake_quant_backward: grad_factor must be finite");
    check(layout, scale, zero_point, range);
    const auto kernels = pick(options.isa);
    const std::vector<Block> blocks = blocks_of(layout);
    const long count = static_cast<long>(blocks.size());
    const bool want_scale = gscale != nullptr, want_zero = gzero != nullptr;
    std::vector<double> sum_scale(blocks.size(), 0.0), sum_outside(blocks.size(), 0.0);
    const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
#pragma omp parallel for schedule(dynamic, 4) num_threads(thread_count(options.num_threads, layout.size(), blocks.size()))
    for (long i = 0; i < count; ++i) {
        const Block& b = blocks[i];
        const std::size_t c = b.row % layout.channels, offset = b.row * layout.inner + b.begin;
        kernels.backward_row(x + offset, gy + offset, gx + offset, b.len, scale[c], zero_point[c], qmin, qmax,
                             want_scale, want_zero, &sum_scale[i], &sum_outside[i]);
    }
    if (!want_scale && !want_zero) return;
    std::vector<double> per_scale(layout.channels, 0.0), per_outside(layout.channels, 0.0);
    for (std::size_t i = 0; i < blocks.size(); ++i) {  // block order: the same for any thread count
        const std::size_t c = blocks[i].row % layout.channels;
        per_scale[c] += sum_scale[i];
        per_outside[c] += sum_outside[i];
    }
    for (std::size_t c = 0; c < layout.channels; ++c) {
        if (want_scale) gscale[c] = static_cast<float>(grad_factor * per_scale[c]);
        if (want_zero) gzero[c] = static_cast<float>(-grad_factor * static_cast<double>(scale[c]) * per_outside[c]);
    }
}

}  // namespace ompq
