// CUDA fake quantization: the same arithmetic as cpp/src/fake_quant_kernels.inc (built with
// --fmad=false, so nothing is contracted): y = (clamp(rint(x * (1/s)) + z, qmin, qmax) - z) * s.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <stdexcept>
#include <string>

#include "ompq/checked.hpp"
#include "ompq/cuda.hpp"
#include "../src/fake_quant_columns.hpp"
#include "block_sum.cuh"

namespace ompq::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Channel of element i of an [outer][channels][inner] tensor. Index is 32-bit whenever the tensor
// allows: a 64-bit division is a long software routine on the GPU.
template <typename Index>
__device__ __forceinline__ Index channel_of(Index i, Index channels, Index inner) {
    if (channels == 1) return 0;
    const Index row = i / inner;
    return row < channels ? row : row % channels;
}

__device__ __forceinline__ bool inside_grid(float x, float inv, float z, float qmin, float qmax) {
    const float q = rintf(x * inv) + z;
    return q >= qmin && q <= qmax;
}

// The straight-through gradient of one element, also adding its LSQ terms: gy * d (d = round(x/s)
// - x/s on the grid, qmin - z below it, qmax - z above; the product in float32, the sum in float64,
// as on the CPU) and gy off the grid.
__device__ __forceinline__ float masked_adding_terms(float x, float gy, float inv, float z, float qmin, float qmax,
                                                     double& sum_scale, double& sum_outside) {
    const float xs = x * inv;
    const float r = rintf(xs);
    const float q = r + z;
    const bool inside = q >= qmin && q <= qmax;
    const float d = inside ? r - xs : (q < qmin ? qmin - z : qmax - z);
    sum_scale += static_cast<double>(gy * d);
    sum_outside += inside ? 0.0 : static_cast<double>(gy);
    return inside ? gy : 0.0f;
}

// Channel c's scale and zero-point gradients from its float64 sums.
__device__ __forceinline__ void write_channel_gradients(long long c, double sum_scale, double sum_outside,
                                                        const float* scale, float grad_factor, float* gscale,
                                                        float* gzero) {
    if (gscale) gscale[c] = static_cast<float>(grad_factor * sum_scale);
    if (gzero) gzero[c] = static_cast<float>(-grad_factor * static_cast<double>(scale[c]) * sum_outside);
}

// One element's fake quantization: y = (clamp(rint(x * inv) + z, qmin, qmax) - z) * s, inv = 1/s in float32.
__device__ __forceinline__ float fake_quant_one(float x, float s, float inv, float z, float qmin, float qmax) {
    return (clampf(rintf(x * inv) + z, qmin, qmax) - z) * s;
}

// Four values of one channel, each with the scalar arithmetic: the results are the same bit for bit.
__device__ __forceinline__ float4 fake_quant_one(float4 v, float s, float inv, float z, float qmin, float qmax) {
    return {fake_quant_one(v.x, s, inv, z, qmin, qmax), fake_quant_one(v.y, s, inv, z, qmin, qmax),
            fake_quant_one(v.z, s, inv, z, qmin, qmax), fake_quant_one(v.w, s, inv, z, qmin, qmax)};
}

// Element is float (one value per thread step) or float4 (four: one 16-byte load and store, one channel lookup
// and one reciprocal, where x and y are 16-byte aligned and each run of one channel is a whole number of quads;
// `inner` then counts quads).
template <typename Element, typename Index>
__global__ void forward_kernel(const Element* __restrict__ x, Element* __restrict__ y, Index size, Index channels,
                               Index inner, const float* __restrict__ scale, const float* __restrict__ zero,
                               float qmin, float qmax) {
    const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
    for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += step) {
        const Index c = channel_of(i, channels, inner);
        const float s = scale[c];
        y[i] = fake_quant_one(x[i], s, 1.0f / s, zero[c], qmin, qmax);
    }
}

// The straight-through gradient alone (no scale / zero-point sums): one elementwise pass.
template <typename Index>
__global__ void backward_mask_kernel(const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ gx,
                                     Index size, Index channels, Index inner, const float* __restrict__ scale,
                                     const float* __restrict__ zero, float qmin, float qmax) {
    const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
    for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += step) {
        const Index c = channel_of(i, channels, inner);
        gx[i] = inside_grid(x[i], 1.0f / scale[c], zero[c], qmin, qmax) ? gy[i] : 0.0f;
    }
}

// With the scale / zero-point sums: one block per (row = outer * channels + channel, segment of the
// row's inner elements), gx and the block's two partial sums in one pass.
__global__ void backward_kernel(const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ gx,
                                long long channels, long long inner, long long segments,
                                const float* __restrict__ scale, const float* __restrict__ zero, float qmin, float qmax,
                                double* __restrict__ partial) {
    const long long block = blockIdx.x;
    const long long row = block / segments, seg = block % segments;
    const long long c = row % channels;
    const float z = zero[c];
    const float inv = 1.0f / scale[c];
    const long long begin = row * inner + seg * static_cast<long long>(kQuantSegment);
    const long long len = min(static_cast<long long>(kQuantSegment), inner - seg * static_cast<long long>(kQuantSegment));
    double acc_scale = 0.0, acc_out = 0.0;
    for (long long k = threadIdx.x; k < len; k += blockDim.x) {
        const long long i = begin + k;
        gx[i] = masked_adding_terms(x[i], gy[i], inv, z, qmin, qmax, acc_scale, acc_out);
    }
    __shared__ double sh_scale[kThreads], sh_out[kThreads];
    const double sum_scale = block_sum<kThreads>(acc_scale, sh_scale);
    const double sum_out = block_sum<kThreads>(acc_out, sh_out);
    if (threadIdx.x == 0) {
        partial[2 * block] = sum_scale;
        partial[2 * block + 1] = sum_out;
    }
}

// One thread per channel: its rows' partial sums, in order.
__global__ void channel_sums(const double* __restrict__ partial, long long outer, long long channels,
                             long long segments, const float* __restrict__ scale, float grad_factor,
                             float* __restrict__ gscale, float* __restrict__ gzero) {
    const long long c = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (c >= channels) return;
    double sum_scale = 0.0, sum_out = 0.0;
    for (long long o = 0; o < outer; ++o)
        for (long long seg = 0; seg < segments; ++seg) {
            const long long block = (o * channels + c) * segments + seg;
            sum_scale += partial[2 * block];
            sum_out += partial[2 * block + 1];
        }
    write_channel_gradients(c, sum_scale, sum_out, scale, grad_factor, gscale, gzero);
}

// Channels last with LSQ sums (fake_quant_columns.hpp): one thread per column of the column view
// takes a tile of rows in float64 (consecutive threads read consecutive elements), one partial
// per (row tile, column); then each column adds its row tiles in order, then each channel its
// columns in order.
__global__ void column_partials(const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ gx,
                                long long size, long long width, long long period, long long inner, long long rows,
                                long long tile_rows, const float* __restrict__ scale, const float* __restrict__ zero,
                                float qmin, float qmax, double* __restrict__ partial) {
    const long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (j >= width) return;
    const long long c = (j % period) / inner;
    const float z = zero[c];
    const float inv = 1.0f / scale[c];
    const long long r0 = blockIdx.y * tile_rows;
    const long long r1 = min(r0 + tile_rows, rows);
    double acc_scale = 0.0, acc_out = 0.0;
    for (long long r = r0; r < r1; ++r) {
        const long long i = r * width + j;
        if (i >= size) break;  // the last row may be short
        gx[i] = masked_adding_terms(x[i], gy[i], inv, z, qmin, qmax, acc_scale, acc_out);
    }
    double* out = partial + 2 * (static_cast<long long>(blockIdx.y) * width + j);
    out[0] = acc_scale;
    out[1] = acc_out;
}

// Column j's row tiles, in order, into the first tile's slot.
__global__ void column_totals(double* __restrict__ partial, long long width, long long tiles) {
    const long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (j >= width) return;
    double a = 0.0, b = 0.0;
    for (long long t = 0; t < tiles; ++t) {
        a += partial[2 * (t * width + j)];
        b += partial[2 * (t * width + j) + 1];
    }
    partial[2 * j] = a;
    partial[2 * j + 1] = b;
}

// One thread per channel: its columns (period by period, then along its run), in order.
__global__ void channel_sums_of_columns(const double* __restrict__ partial, long long width, long long period,
                                        long long inner, long long channels, const float* __restrict__ scale,
                                        float grad_factor, float* __restrict__ gscale, float* __restrict__ gzero) {
    const long long c = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (c >= channels) return;
    double sum_scale = 0.0, sum_out = 0.0;
    for (long long m = 0; m < width; m += period)
        for (long long k = 0; k < inner; ++k) {
            const long long j = m + c * inner + k;
            sum_scale += partial[2 * j];
            sum_out += partial[2 * j + 1];
        }
    write_channel_gradients(c, sum_scale, sum_out, scale, grad_factor, gscale, gzero);
}

// The column view's sizes: width, rows, rows per tile (tiles are a grid dimension: at most 65535).
struct ColumnGrid {
    long long period, width, rows, tile_rows, tiles;
    explicit ColumnGrid(const QuantLayout& layout) {
        period = static_cast<long long>(layout.channels * layout.inner);
        width = static_cast<long long>(detail::column_width(static_cast<std::size_t>(period)));
        const auto size = static_cast<long long>(layout.size());
        rows = (size + width - 1) / width;
        tile_rows = std::max(64LL, (rows + 65534) / 65535);
        tiles = (rows + tile_rows - 1) / tile_rows;
    }
};

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

// The CPU core's checks that need no device values (those would synchronise).
void check_layout(const QuantLayout& layout, QuantRange range) {
    if (layout.channels == 0) throw std::invalid_argument("fake_quant: the layout has no channels");
    if (range.qmin > range.qmax) throw std::invalid_argument("fake_quant: qmin > qmax");
    if (range.qmin < -(1L << 16) || range.qmax > (1L << 16))
        throw std::invalid_argument("fake_quant: the integer range must lie within +-65536 (at most 16 bits)");
}

// Runs launch(size, channels, inner, blocks, stream) with 32-bit indices when the tensor has fewer
// than 2^31 elements (so the grid-stride loop cannot overflow), 64-bit ones otherwise.
template <typename Launch>
void launch_elementwise(const QuantLayout& layout, void* stream, const char* what, Launch launch) {
    const auto size = static_cast<long long>(layout.size());
    if (size == 0) return;
    const auto blocks = static_cast<unsigned>(std::min<long long>((size + kThreads - 1) / kThreads, 65535LL * 32));
    auto s = static_cast<cudaStream_t>(stream);
    if (size <= 2147483647LL)
        launch(static_cast<unsigned>(size), static_cast<unsigned>(layout.channels), static_cast<unsigned>(layout.inner),
               blocks, s);
    else
        launch(size, static_cast<long long>(layout.channels), static_cast<long long>(layout.inner), blocks, s);
    check(cudaGetLastError(), what);
}

long long segments_of(const QuantLayout& layout) {
    return layout.inner == 0 ? 0 : static_cast<long long>((layout.inner + kQuantSegment - 1) / kQuantSegment);
}

void column_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero, const QuantLayout& layout,
                     const float* scale, const float* zero_point, float qmin, float qmax, float grad_factor,
                     double* partial, cudaStream_t s) {
    const ColumnGrid g(layout);
    const auto column_blocks = static_cast<unsigned>((g.width + kThreads - 1) / kThreads);
    column_partials<<<dim3(column_blocks, static_cast<unsigned>(g.tiles)), kThreads, 0, s>>>(
        x, gy, gx, static_cast<long long>(layout.size()), g.width, g.period, static_cast<long long>(layout.inner),
        g.rows, g.tile_rows, scale, zero_point, qmin, qmax, partial);
    check(cudaGetLastError(), "fake_quant column backward launch");
    column_totals<<<column_blocks, kThreads, 0, s>>>(partial, g.width, g.tiles);
    check(cudaGetLastError(), "fake_quant column totals launch");
    const auto channels = static_cast<long long>(layout.channels);
    channel_sums_of_columns<<<static_cast<unsigned>((channels + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        partial, g.width, g.period, static_cast<long long>(layout.inner), channels, scale, grad_factor, gscale, gzero);
    check(cudaGetLastError(), "fake_quant column channel sums launch");
}

}  // namespace

void fake_quant_forward(const float* x, float* y, const QuantLayout& layout, const float* scale,
                        const float* zero_point, QuantRange range, void* stream) {
    check_layout(layout, range);
    const auto qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
    auto scalar = [&](const float* from, float* to, const QuantLayout& part) {
        launch_elementwise(part, stream, "fake_quant forward launch", [&](auto size, auto channels, auto inner,
                                                                           unsigned blocks, cudaStream_t s) {
            forward_kernel<<<blocks, kThreads, 0, s>>>(from, to, size, channels, inner, scale, zero_point, qmin, qmax);
        });
    };
    // Quads where every channel run is a whole number of them; one channel: quads, then the last 0-3 elements.
    const QuantLayout merged = detail::merge_single_channel(layout);
    const bool one_channel = merged.channels == 1;
    const bool aligned = reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && reinterpret_cast<std::uintptr_t>(y) % 16 == 0;
    const std::size_t quads = !aligned ? 0 : one_channel ? merged.inner / 4 : merged.inner % 4 == 0 ? merged.size() / 4 : 0;
    if (quads == 0) return scalar(x, y, layout);
    const QuantLayout quad_layout =
        one_channel ? QuantLayout{1, 1, quads} : QuantLayout{merged.outer, merged.channels, merged.inner / 4};
    launch_elementwise(quad_layout, stream, "fake_quant forward launch", [&](auto size, auto channels, auto inner,
                                                                              unsigned blocks, cudaStream_t s) {
        forward_kernel<<<blocks, kThreads, 0, s>>>(reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y),
                                                   size, channels, inner, scale, zero_point, qmin, qmax);
    });
    const std::size_t rest = merged.size() - 4 * quads;
    if (rest > 0) scalar(x + 4 * quads, y + 4 * quads, QuantLayout{1, 1, rest});
}

std::size_t fake_quant_backward_workspace_bytes(const QuantLayout& given) {
    const char* what = "fake_quant_backward_workspace_bytes";
    // The tensor's size, and what the grid below computes in signed 64-bit, must fit first.
    if (checked_mul(checked_mul(given.outer, given.channels, what), given.inner, what) >
        static_cast<std::size_t>(std::numeric_limits<long long>::max() / 4))
        throw std::invalid_argument(std::string(what) + ": the tensor is too large to address");
    const QuantLayout layout = detail::merge_single_channel(given);
    if (detail::short_runs(layout) && layout.size() > 0) {
        const ColumnGrid g(layout);
        return static_cast<std::size_t>(g.tiles * g.width) * 2 * sizeof(double);
    }
    return checked_mul(checked_mul(checked_mul(layout.outer, layout.channels, what),
                                   static_cast<std::size_t>(segments_of(layout)), what),
                       2 * sizeof(double), what);
}

void fake_quant_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& given, const float* scale, const float* zero_point, QuantRange range,
                         float grad_factor, void* workspace, std::size_t workspace_bytes, void* stream) {
    check_layout(given, range);
    const QuantLayout layout = detail::merge_single_channel(given);
    if (!std::isfinite(grad_factor)) throw std::invalid_argument("fake_quant_backward: grad_factor must be finite");
    const bool want_sums = gscale != nullptr || gzero != nullptr;
    if (want_sums && workspace_bytes < fake_quant_backward_workspace_bytes(layout))
        throw std::invalid_argument("workspace too small");
    auto s = static_cast<cudaStream_t>(stream);
    if (layout.size() == 0) {  // no elements: the sums are zero
        const std::size_t bytes = layout.channels * sizeof(float);
        if (gscale) check(cudaMemsetAsync(gscale, 0, bytes, s), "fake_quant backward memset");
        if (gzero) check(cudaMemsetAsync(gzero, 0, bytes, s), "fake_quant backward memset");
        return;
    }
    const auto qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
    if (!want_sums) {
        launch_elementwise(layout, stream, "fake_quant backward launch", [&](auto size, auto channels, auto inner,
                                                                              unsigned blocks, cudaStream_t s) {
            backward_mask_kernel<<<blocks, kThreads, 0, s>>>(x, gy, gx, size, channels, inner, scale, zero_point,
                                                             qmin, qmax);
        });
        return;
    }
    if (detail::short_runs(layout)) {
        column_backward(x, gy, gx, gscale, gzero, layout, scale, zero_point, qmin, qmax, grad_factor,
                        static_cast<double*>(workspace), s);
        return;
    }
    const long long segments = segments_of(layout);
    const long long blocks = static_cast<long long>(layout.outer * layout.channels) * segments;
    if (blocks > 2147483647LL) throw std::invalid_argument("tensor too large for one call");
    auto* partial = static_cast<double*>(workspace);
    backward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
        x, gy, gx, static_cast<long long>(layout.channels), static_cast<long long>(layout.inner), segments, scale,
        zero_point, qmin, qmax, partial);
    check(cudaGetLastError(), "fake_quant backward launch");
    const long long channels = static_cast<long long>(layout.channels);
    channel_sums<<<static_cast<unsigned>((channels + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        partial, static_cast<long long>(layout.outer), channels, segments, scale, grad_factor, gscale, gzero);
    check(cudaGetLastError(), "fake_quant channel sums launch");
}

}  // namespace ompq::cuda
