// Internal: the per-instruction-set tile kernels behind gram_accumulate.
//
// A tile kernel computes the 4 × 4 block of dot products between rows a[0..3]
// and rows b[0..3] over `len` elements, summing in float32 (float64 for
// float64 input), and writes the 16 sums to out[4 * r + c] as float64.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ompq/gram.hpp"

namespace ompq::detail {

using TileKernel = void (*)(const void* const* a, const void* const* b, std::size_t len,
                            double* out);

// Each returns nullptr for a dtype the instruction set does not handle.
TileKernel generic_tile_kernel(DType dtype);
TileKernel avx2_tile_kernel(DType dtype);
TileKernel avx512_tile_kernel(DType dtype, bool has_bf16_dot);

// Scalar conversions shared by the generic kernel and the tests' references.
inline float bf16_to_float(std::uint16_t bits) {
    std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    std::uint32_t u;
    if (exponent == 0x1f) {  // inf or NaN
        u = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {  // normal
        u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {  // signed zero
        u = sign;
    } else {  // subnormal: normalise the mantissa
        exponent = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        u = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

}  // namespace ompq::detail
