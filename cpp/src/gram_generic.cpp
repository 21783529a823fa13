// Portable tile kernels: plain loops over 8-wide partial sums that any
// compiler vectorises for the baseline instruction set.
#include <cstdint>

#include "gram_kernels.hpp"

namespace ompq::detail {
namespace {

struct LoadF32 {
    using T = float;
    static float at(const T* p, std::size_t i) { return p[i]; }
};
struct LoadF16 {
    using T = std::uint16_t;
    static float at(const T* p, std::size_t i) { return f16_to_float(p[i]); }
};
struct LoadBF16 {
    using T = std::uint16_t;
    static float at(const T* p, std::size_t i) { return bf16_to_float(p[i]); }
};
struct LoadF64 {
    using T = double;
    static double at(const T* p, std::size_t i) { return p[i]; }
};

// Acc is float for the 32- and 16-bit inputs and double for float64 input.
template <class Load, class Acc>
void tile(const void* const* a_rows, const void* const* b_rows, std::size_t len, double* out) {
    using T = typename Load::T;
    constexpr std::size_t W = 8;
    const T* a[4];
    const T* b[4];
    for (int r = 0; r < 4; ++r) {
        a[r] = static_cast<const T*>(a_rows[r]);
        b[r] = static_cast<const T*>(b_rows[r]);
    }
    Acc acc[4][4][W] = {};
    std::size_t k = 0;
    for (; k + W <= len; k += W) {
        Acc va[4][W], vb[4][W];
        for (int r = 0; r < 4; ++r)
            for (std::size_t l = 0; l < W; ++l) {
                va[r][l] = Load::at(a[r], k + l);
                vb[r][l] = Load::at(b[r], k + l);
            }
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c)
                for (std::size_t l = 0; l < W; ++l) acc[r][c][l] += va[r][l] * vb[c][l];
    }
    for (; k < len; ++k)
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c)
                acc[r][c][0] += static_cast<Acc>(Load::at(a[r], k)) * Load::at(b[c], k);
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) {
            Acc s = 0;
            for (std::size_t l = 0; l < W; ++l) s += acc[r][c][l];
            out[4 * r + c] = static_cast<double>(s);
        }
}

}  // namespace

TileKernel generic_tile_kernel(DType dtype) {
    switch (dtype) {
        case DType::f32: return tile<LoadF32, float>;
        case DType::f16: return tile<LoadF16, float>;
        case DType::bf16: return tile<LoadBF16, float>;
        case DType::f64: return tile<LoadF64, double>;
    }
    return nullptr;
}

}  // namespace ompq::detail
