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
#include "fake_quant_columns.hpp"
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

void check_range(QuantRange range) {
    if (range.qmin > range.qmax)
        throw std::invalid_argument("fake_quant: qmin (" + std::to_string(range.qmin) + ") > qmax (" +
                                    std::to_string(range.qmax) + ")");
    if (range.qmin < -(1L << 16) || range.qmax > (1L << 16))
        throw std::invalid_argument("fake_quant: the integer range must lie within +-65536 (at most 16 bits)");
}

void check(const QuantLayout& layout, const float* scale, const float* zero_point, QuantRange range) {
    if (layout.channels == 0) throw std::invalid_argument("fake_quant: the layout has no channels");
    check_range(range);
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

// Channels last (each channel's run shorter than kShortRun elements): the blocks above would be one
// per run. Instead the tensor is read in the column view (fake_quant_columns.hpp), each column with
// its own copy of its channel's scale, reciprocal and zero point. Tiles of rows x columns are the
// unit of parallel work and of the LSQ partial sums (one per column per tile, added in tile order:
// the same for any thread count).
using detail::short_runs;
constexpr std::size_t kTileColumns = 4096;   // wider rows are split into column chunks
constexpr std::size_t kTileElements = 32768;
constexpr std::size_t kMinTileRows = 16;     // partial sums: <= 1 byte per element from 16 rows up

struct Columns {
    std::size_t channels, inner, period, width, rows, size;
    const float *s, *inv, *z;  // per column: the layout's own arrays (one run per channel), or `storage`
    std::vector<float> inv_channel, storage;
    Columns() = default;
    Columns(Columns&&) = default;  // a move keeps the vectors' buffers, so s, inv, z stay valid
    Columns(const Columns&) = delete;
};

Columns columns_of(const QuantLayout& layout, const float* scale, const float* zero_point) {
    Columns c;
    c.channels = layout.channels;
    c.inner = layout.inner;
    c.period = layout.channels * layout.inner;
    c.width = detail::column_width(c.period);
    c.size = layout.size();
    c.rows = (c.size + c.width - 1) / c.width;
    c.inv_channel.resize(c.channels);
    for (std::size_t ch = 0; ch < c.channels; ++ch) c.inv_channel[ch] = 1.0f / scale[ch];  // as forward_row
    if (c.inner == 1 && c.width == c.period) {  // column j is channel j: nothing to expand
        c.s = scale;
        c.inv = c.inv_channel.data();
        c.z = zero_point;
        return c;
    }
    c.storage.resize(3 * c.width);
    float* s = c.storage.data();
    float* inv = s + c.width;
    float* z = inv + c.width;
    for (std::size_t ch = 0, j = 0; ch < c.channels; ++ch)  // the first period, run by run
        for (std::size_t k = 0; k < c.inner; ++k, ++j) {
            s[j] = scale[ch];
            inv[j] = c.inv_channel[ch];
            z[j] = zero_point[ch];
        }
    for (float* a : {s, inv, z})  // then whole copies of it
        for (std::size_t j = c.period; j < c.width; j += c.period) std::copy(a, a + c.period, a + j);
    c.s = s;
    c.inv = inv;
    c.z = z;
    return c;
}

struct Tile {
    std::size_t row0, rows, col0, cols;
};

std::vector<Tile> tiles_of(const Columns& c) {
    const std::size_t cols = std::min(c.width, kTileColumns);
    const std::size_t rows = std::max(kMinTileRows, (kTileElements + cols - 1) / cols);
    std::vector<Tile> tiles;
    for (std::size_t r = 0; r < c.rows; r += rows)
        for (std::size_t j = 0; j < c.width; j += cols)
            tiles.push_back({r, std::min(rows, c.rows - r), j, std::min(cols, c.width - j)});
    return tiles;
}

// span(tile, offset, len, first column) for each row of each tile (the tensor's last row may be
// short), tiles in parallel.
template <typename Span>
void for_each_span(const Columns& c, const std::vector<Tile>& tiles, int threads, Span span) {
    const long count = static_cast<long>(tiles.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long t = 0; t < count; ++t) {
        const Tile& tile = tiles[t];
        for (std::size_t r = tile.row0; r < tile.row0 + tile.rows; ++r) {
            const std::size_t row_len = std::min(c.width, c.size - r * c.width);
            if (row_len > tile.col0)
                span(static_cast<std::size_t>(t), r * c.width + tile.col0, std::min(tile.cols, row_len - tile.col0),
                     tile.col0);
        }
    }
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

void write_lsq_gradients(const std::vector<double>& per_scale, const std::vector<double>& per_outside,
                         const float* scale, float grad_factor, float* gscale, float* gzero) {
    for (std::size_t c = 0; c < per_scale.size(); ++c) {
        if (gscale) gscale[c] = static_cast<float>(grad_factor * per_scale[c]);
        if (gzero) gzero[c] = static_cast<float>(-grad_factor * static_cast<double>(scale[c]) * per_outside[c]);
    }
}

void backward_short_runs(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& layout, const float* scale, const float* zero_point, float qmin,
                         float qmax, float grad_factor, const detail::FakeQuantKernels& kernels, int num_threads) {
    const Columns c = columns_of(layout, scale, zero_point);
    const std::vector<Tile> tiles = tiles_of(c);
    const bool sums = gscale != nullptr || gzero != nullptr;
    std::vector<std::size_t> first(tiles.size() + 1, 0);  // where each tile's partial sums start
    for (std::size_t t = 0; t < tiles.size(); ++t) first[t + 1] = first[t] + (sums ? tiles[t].cols : 0);
    std::vector<double> part_scale(first.back(), 0.0), part_outside(first.back(), 0.0);
    for_each_span(c, tiles, thread_count(num_threads, c.size, tiles.size()),
                  [&](std::size_t t, std::size_t offset, std::size_t len, std::size_t col) {
                      kernels.backward_cols(x + offset, gy + offset, gx + offset, len, c.inv + col, c.z + col, qmin,
                                            qmax, sums, sums ? &part_scale[first[t]] : nullptr,
                                            sums ? &part_outside[first[t]] : nullptr);
                  });
    if (!sums) return;
    std::vector<double> per_scale(layout.channels, 0.0), per_outside(layout.channels, 0.0);
    for (std::size_t t = 0; t < tiles.size(); ++t) {  // tile order, then column order
        const std::size_t pos = tiles[t].col0 % c.period;
        std::size_t ch = pos / c.inner, k = pos % c.inner;  // column -> channel, walked without dividing
        for (std::size_t i = first[t]; i < first[t + 1]; ++i) {
            per_scale[ch] += part_scale[i];
            per_outside[ch] += part_outside[i];
            if (++k == c.inner) {
                k = 0;
                if (++ch == c.channels) ch = 0;
            }
        }
    }
    write_lsq_gradients(per_scale, per_outside, scale, grad_factor, gscale, gzero);
}

}  // namespace

void fake_quant_forward(const float* x, float* y, const QuantLayout& given, const float* scale,
                        const float* zero_point, QuantRange range, const FakeQuantOptions& options) {
    if (x == nullptr || y == nullptr || scale == nullptr || zero_point == nullptr)
        throw std::invalid_argument("fake_quant_forward: null pointer");
    check(given, scale, zero_point, range);
    const QuantLayout layout = detail::merge_single_channel(given);
    const auto kernels = pick(options.isa);
    const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
    if (short_runs(layout) && layout.size() > 0) {
        const Columns c = columns_of(layout, scale, zero_point);
        const std::vector<Tile> tiles = tiles_of(c);
        for_each_span(c, tiles, thread_count(options.num_threads, c.size, tiles.size()),
                      [&](std::size_t, std::size_t offset, std::size_t len, std::size_t col) {
                          kernels.forward_cols(x + offset, y + offset, len, c.s + col, c.inv + col, c.z + col, qmin,
                                               qmax);
                      });
        return;
    }
    const std::vector<Block> blocks = blocks_of(layout);
    const long count = static_cast<long>(blocks.size());
#pragma omp parallel for schedule(dynamic, 4) num_threads(thread_count(options.num_threads, layout.size(), blocks.size()))
    for (long i = 0; i < count; ++i) {
        const Block& b = blocks[i];
        const std::size_t c = b.row % layout.channels, offset = b.row * layout.inner + b.begin;
        kernels.forward_row(x + offset, y + offset, b.len, scale[c], zero_point[c], qmin, qmax);
    }
}

void fake_quant_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& given, const float* scale, const float* zero_point, QuantRange range,
                         float grad_factor, const FakeQuantOptions& options) {
    if (x == nullptr || gy == nullptr || gx == nullptr || scale == nullptr || zero_point == nullptr)
        throw std::invalid_argument("fake_quant_backward: null pointer");
    if (!std::isfinite(grad_factor)) throw std::invalid_argument("fake_quant_backward: grad_factor must be finite");
    check(given, scale, zero_point, range);
    const QuantLayout layout = detail::merge_single_channel(given);
    const auto kernels = pick(options.isa);
    const bool want_scale = gscale != nullptr, want_zero = gzero != nullptr;
    const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
    if (short_runs(layout) && layout.size() > 0) {
        backward_short_runs(x, gy, gx, gscale, gzero, layout, scale, zero_point, qmin, qmax, grad_factor, kernels,
                            options.num_threads);
        return;
    }
    const std::vector<Block> blocks = blocks_of(layout);
    const long count = static_cast<long>(blocks.size());
    std::vector<double> sum_scale(blocks.size(), 0.0), sum_outside(blocks.size(), 0.0);
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
    write_lsq_gradients(per_scale, per_outside, scale, grad_factor, gscale, gzero);
}

void mse_weight_scales(const float* w, std::size_t channels, std::size_t k, const float* base, const float* ratios,
                       std::size_t num_ratios, QuantRange range, float* scales, double* errors,
                       const FakeQuantOptions& options) {
    if (w == nullptr || base == nullptr || ratios == nullptr || scales == nullptr)
        throw std::invalid_argument("mse_weight_scales: null pointer");
    if (num_ratios == 0) throw std::invalid_argument("mse_weight_scales: no ratios to try");
    check_range(range);
    for (std::size_t r = 0; r < num_ratios; ++r)
        if (!(ratios[r] > 0.0f) || !std::isfinite(ratios[r]))
            throw std::invalid_argument("mse_weight_scales: ratio[" + std::to_string(r) + "] = " +
                                        std::to_string(ratios[r]) + " must be positive and finite");
    for (std::size_t c = 0; c < channels; ++c) {
        if (!(base[c] > 0.0f) || !std::isfinite(base[c]))
            throw std::invalid_argument("mse_weight_scales: base scale[" + std::to_string(c) + "] = " +
                                        std::to_string(base[c]) + " must be positive and finite");
        for (std::size_t r = 0; r < num_ratios; ++r) {  // every candidate must be a valid fake-quant scale
            const float s = base[c] * ratios[r];
            if (!(s > 0.0f) || !std::isfinite(s) || !std::isfinite(1.0f / s))
                throw std::invalid_argument("mse_weight_scales: base scale[" + std::to_string(c) + "] * ratio[" +
                                            std::to_string(r) + "] = " + std::to_string(s) +
                                            " is not a positive scale with a finite inverse");
        }
    }
    const auto kernels = pick(options.isa);
    const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
    const long count = static_cast<long>(channels);
    // One channel per work item: its row is read num_ratios times while it sits in cache.
#pragma omp parallel num_threads(thread_count(options.num_threads, channels * k * num_ratios, channels))
    {
        std::vector<double> row_f64(k);  // the row in float64, converted once for all the ratios
#pragma omp for schedule(dynamic, 1)
        for (long c = 0; c < count; ++c) {
            const float* row = w + static_cast<std::size_t>(c) * k;
            std::copy(row, row + k, row_f64.begin());
            float best = base[c] * ratios[0];
            double best_err = INFINITY;
            for (std::size_t r = 0; r < num_ratios; ++r) {
                const float s = base[c] * ratios[r];
                const double err = kernels.squared_error_row(row, row_f64.data(), k, s, qmin, qmax);
                if (err < best_err) {  // strictly less: the first minimum wins
                    best_err = err;
                    best = s;
                }
            }
            scales[c] = best;
            if (errors) errors[c] = best_err;
        }
    }
}

}  // namespace ompq
