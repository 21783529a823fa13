// The fake-quant row kernels compiled for the avx2 instruction set.
#include "fake_quant_kernels.hpp"

namespace ompq::detail::avx2 {
#include "fake_quant_kernels.inc"
}  // namespace ompq::detail::avx2
