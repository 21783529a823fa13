// The fake-quant row kernels compiled for the generic instruction set.
#include "fake_quant_kernels.hpp"

namespace ompq::detail::generic {
#include "fake_quant_kernels.inc"
}  // namespace ompq::detail::generic
