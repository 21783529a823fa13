// Fake quantization of float32 tensors: forward, and the backward pass with the
// straight-through estimator, its clipping mask and the LSQ gradients of a
// learnable scale and zero point. Plain C++17, no Python, no torch.
//
// A tensor is seen as [outer][channels][inner] (row-major): per-channel
// quantization along axis a has outer = prod(shape[:a]), channels = shape[a],
// inner = prod(shape[a+1:]); per-tensor has channels = 1.
#pragma once

#include <cstddef>

#include "ompq/gram.hpp"  // Isa

namespace ompq {

struct QuantLayout {
    std::size_t outer = 1, channels = 1, inner = 0;
    std::size_t size() const { return outer * channels * inner; }
};

// Integer grid [qmin, qmax]: symmetric signed b bits is [-2^(b-1), 2^(b-1) - 1],
// asymmetric (unsigned) b bits is [0, 2^b - 1].
struct QuantRange {
    long qmin = -128, qmax = 127;
};

struct FakeQuantOptions {
    int num_threads = 0;  // 0: OpenMP default
    Isa isa = Isa::best;
};

// y = (clamp(round(x * (1/s_c)) + z_c, qmin, qmax) - z_c) * s_c per channel c, where 1/s_c is
// computed in float32 and round is half-to-even: bit for bit what
// torch.fake_quantize_per_{tensor,channel}_affine compute for finite x with |x/s| < 2^63 (beyond,
// torch's int64 cast overflows; this saturates by sign; NaN stays NaN). Zero points are
// whole numbers stored as float. y may alias x. Throws std::invalid_argument on bad
// arguments (a scale that is not positive and finite, qmin > qmax, ...).
void fake_quant_forward(const float* x, float* y, const QuantLayout& layout, const float* scale,
                        const float* zero_point, QuantRange range, const FakeQuantOptions& options = {});

// The backward pass, in one sweep over x and the incoming gradient gy:
//   gx = gy where round(x/s) + z lies in [qmin, qmax], else 0 (straight-through + clipping mask);
//   gscale[c] (if not null) = grad_factor * sum over channel c of gy * d, the LSQ gradient, with
//     d = round(x/s) - x/s inside the range, qmin - z below it, qmax - z above it;
//   gzero[c] (if not null) = grad_factor * sum over channel c of gy * (0 inside, -s outside).
// The sums are in float64 over fixed blocks added in a fixed order: the same for any thread count.
void fake_quant_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& layout, const float* scale, const float* zero_point,
                         QuantRange range, float grad_factor = 1.0f, const FakeQuantOptions& options = {});

// MSE clipping search for per-channel symmetric weight scales. w is channels x k (row-major, one
// output channel per row). For each channel c it tries the scales s = base[c] * ratios[r] (a float32
// product), r = 0..num_ratios-1, quantizes the row as fake_quant_forward does with scale s and zero
// point 0, and writes to scales[c] the s of the least sum of (y - w)^2 (float64; on a tie the first
// ratio in order wins) and, if errors is not null, that sum to errors[c]. The result does not depend
// on the thread count or the ISA. Throws std::invalid_argument on bad arguments (a null pointer, no
// ratios, a base scale or ratio that is not positive and finite, a candidate scale with no finite
// inverse, qmin > qmax).
void mse_weight_scales(const float* w, std::size_t channels, std::size_t k, const float* base, const float* ratios,
                       std::size_t num_ratios, QuantRange range, float* scales, double* errors = nullptr,
                       const FakeQuantOptions& options = {});

}  // namespace ompq
