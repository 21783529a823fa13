// The fake-quant row kernels compiled for the avx512 instruction set.
#include "fake_quant_kernels.hpp"

namespace ompq::detail::avx512 {
#include "fake_quant_kernels.inc"
}  // namespace ompq::detail::avx512
