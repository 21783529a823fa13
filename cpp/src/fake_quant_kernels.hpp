// Internal: the per-instruction-set row kernels behind fake_quant_forward/backward.
#pragma once

#include <cstddef>

namespace ompq::detail {

struct FakeQuantKernels {
    void (*forward_row)(const float* x, float* y, std::size_t len, float s, float z, float qmin, float qmax);
    void (*backward_row)(const float* x, const float* gy, float* gx, std::size_t len, float s, float z,
                         float qmin, float qmax, bool want_scale, bool want_zero, double* sum_scale,
                         double* sum_outside);
    void (*forward_cols)(const float* x, float* y, std::size_t len, const float* s, const float* inv, const float* z,
                         float qmin, float qmax);
    void (*backward_cols)(const float* x, const float* gy, float* gx, std::size_t len, const float* inv,
                          const float* z, float qmin, float qmax, bool want_sums, double* acc_scale,
                          double* acc_outside);
    // sum over the row of (quantized(x) - x)^2 on the symmetric grid with scale s (zero point 0);
    // xd holds the same row in float64
    double (*squared_error_row)(const float* x, const double* xd, std::size_t len, float s, float qmin, float qmax);
};

namespace generic { FakeQuantKernels kernels(); }
namespace avx2 { FakeQuantKernels kernels(); }
namespace avx512 { FakeQuantKernels kernels(); }

}  // namespace ompq::detail
