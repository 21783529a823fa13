// AVX2 + FMA + F16C tile kernels (8 lanes). With 16 vector registers the 4 × 4
// tile is done as two 2 × 4 halves: 8 accumulators and 6 loaded vectors each.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "gram_kernels.hpp"

namespace ompq::detail {
namespace {

struct LoadF32 {
    using T = float;
    static __m256 load(const T* p) { return _mm256_loadu_ps(p); }
};
struct LoadF16 {
    using T = std::uint16_t;
    static __m256 load(const T* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
};
struct LoadBF16 {
    using T = std::uint16_t;
    static __m256 load(const T* p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
};

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <class Load>
float tail_value(const typename Load::T* p, std::size_t i) {
    if constexpr (std::is_same_v<Load, LoadF32>) return p[i];
    else if constexpr (std::is_same_v<Load, LoadF16>) return f16_to_float(p[i]);
    else return bf16_to_float(p[i]);
}

template <class Load>
void tile(const void* const* a_rows, const void* const* b_rows, std::size_t len, double* out) {
    using T = typename Load::T;
    const T* b[4];
    for (int c = 0; c < 4; ++c) b[c] = static_cast<const T*>(b_rows[c]);
    const std::size_t body = len - len % 8;
    for (int half = 0; half < 2; ++half) {
        const T* a0 = static_cast<const T*>(a_rows[2 * half]);
        const T* a1 = static_cast<const T*>(a_rows[2 * half + 1]);
        __m256 c0[4], c1[4];
        for (int c = 0; c < 4; ++c) c0[c] = c1[c] = _mm256_setzero_ps();
        for (std::size_t k = 0; k < body; k += 8) {
            const __m256 va0 = Load::load(a0 + k), va1 = Load::load(a1 + k);
            for (int c = 0; c < 4; ++c) {
                const __m256 vb = Load::load(b[c] + k);
                c0[c] = _mm256_fmadd_ps(va0, vb, c0[c]);
                c1[c] = _mm256_fmadd_ps(va1, vb, c1[c]);
            }
        }
        for (int c = 0; c < 4; ++c) {
            float s0 = hsum(c0[c]), s1 = hsum(c1[c]);
            for (std::size_t k = body; k < len; ++k) {
                const float vb = tail_value<Load>(b[c], k);
                s0 += tail_value<Load>(a0, k) * vb;
                s1 += tail_value<Load>(a1, k) * vb;
            }
            out[4 * (2 * half) + c] = s0;
            out[4 * (2 * half + 1) + c] = s1;
        }
    }
}

}  // namespace

TileKernel avx2_tile_kernel(DType dtype) {
    switch (dtype) {
        case DType::f32: return tile<LoadF32>;
        case DType::f16: return tile<LoadF16>;
        case DType::bf16: return tile<LoadBF16>;
        case DType::f64: return nullptr;
    }
    return nullptr;
}

}  // namespace ompq::detail
