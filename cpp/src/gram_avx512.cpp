// AVX-512 tile kernels (16 lanes): 16 accumulators and 8 loaded vectors fit the
// 32 registers. Tails use masked loads, so no scalar remainder loop is needed.
// Where the CPU has AVX512-BF16, bfloat16 input uses vdpbf16ps (two products
// per lane and instruction, exact products, float32 sums).
#include <immintrin.h>

#include <cstdint>

#include "gram_kernels.hpp"

namespace ompq::detail {
namespace {

struct LoadF32 {
    using T = float;
    static constexpr std::size_t step = 16;
    static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
    static __m512 load(const T* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
    using T = std::uint16_t;
    static constexpr std::size_t step = 16;
    static __m512 load(const T* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static __m512 load(const T* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadBF16 {
    using T = std::uint16_t;
    static constexpr std::size_t step = 16;
    static __m512 widen(__m256i h) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static __m512 load(const T* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static __m512 load(const T* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

template <class Load>
void tile(const void* const* a_rows, const void* const* b_rows, std::size_t len, double* out) {
    using T = typename Load::T;
    const T* a[4];
    const T* b[4];
    for (int r = 0; r < 4; ++r) {
        a[r] = static_cast<const T*>(a_rows[r]);
        b[r] = static_cast<const T*>(b_rows[r]);
    }
    __m512 acc[4][4];
    for (auto& row : acc)
        for (auto& v : row) v = _mm512_setzero_ps();
    auto step = [&](__m512 (&va)[4], __m512 (&vb)[4]) {
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(va[r], vb[c], acc[r][c]);
    };
    std::size_t k = 0;
    for (; k + 16 <= len; k += 16) {
        __m512 va[4], vb[4];
        for (int r = 0; r < 4; ++r) {
            va[r] = Load::load(a[r] + k);
            vb[r] = Load::load(b[r] + k);
        }
        step(va, vb);
    }
    if (k < len) {
        const __mmask16 m = static_cast<__mmask16>((1u << (len - k)) - 1u);
        __m512 va[4], vb[4];
        for (int r = 0; r < 4; ++r) {
            va[r] = Load::load(a[r] + k, m);
            vb[r] = Load::load(b[r] + k, m);
        }
        step(va, vb);
    }
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) out[4 * r + c] = _mm512_reduce_add_ps(acc[r][c]);
}

// bfloat16 with the dot-product instruction: 32 elements per step.
void tile_bf16_dot(const void* const* a_rows, const void* const* b_rows, std::size_t len, double* out) {
    const std::uint16_t* a[4];
    const std::uint16_t* b[4];
    for (int r = 0; r < 4; ++r) {
        a[r] = static_cast<const std::uint16_t*>(a_rows[r]);
        b[r] = static_cast<const std::uint16_t*>(b_rows[r]);
    }
    __m512 acc[4][4];
    for (auto& row : acc)
        for (auto& v : row) v = _mm512_setzero_ps();
    auto step = [&](__m512i (&va)[4], __m512i (&vb)[4]) {
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)va[r], (__m512bh)vb[c]);
    };
    std::size_t k = 0;
    for (; k + 32 <= len; k += 32) {
        __m512i va[4], vb[4];
        for (int r = 0; r < 4; ++r) {
            va[r] = _mm512_loadu_si512(a[r] + k);
            vb[r] = _mm512_loadu_si512(b[r] + k);
        }
        step(va, vb);
    }
    if (k < len) {
        const __mmask32 m = static_cast<__mmask32>((1ull << (len - k)) - 1u);
        __m512i va[4], vb[4];
        for (int r = 0; r < 4; ++r) {
            va[r] = _mm512_maskz_loadu_epi16(m, a[r] + k);
            vb[r] = _mm512_maskz_loadu_epi16(m, b[r] + k);
        }
        step(va, vb);
    }
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) out[4 * r + c] = _mm512_reduce_add_ps(acc[r][c]);
}

}  // namespace

TileKernel avx512_tile_kernel(DType dtype, bool has_bf16_dot) {
    switch (dtype) {
        case DType::f32: return tile<LoadF32>;
        case DType::f16: return tile<LoadF16>;
        case DType::bf16: return has_bf16_dot ? tile_bf16_dot : tile<LoadBF16>;
        case DType::f64: return nullptr;
    }
    return nullptr;
}

}  // namespace ompq::detail
