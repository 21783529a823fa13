// Internal: which instruction sets this CPU (and this build) can run.
#pragma once

#include "ompq/gram.hpp"

namespace ompq::detail {

struct CpuFeatures {
    bool avx2 = false, avx512 = false, avx512_bf16 = false;
};

const CpuFeatures& cpu_features();

// Isa::best -> the widest available; a named ISA the CPU lacks throws std::invalid_argument.
Isa resolve_isa(Isa requested);

}  // namespace ompq::detail
