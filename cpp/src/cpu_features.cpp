#include "cpu_features.hpp"

#include <stdexcept>

namespace ompq::detail {

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = [] {
        CpuFeatures f;
#if defined(OMPQ_HAVE_X86_KERNELS)
        __builtin_cpu_init();
        f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl");
        f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
        return f;
    }();
    return features;
}

Isa resolve_isa(Isa requested) {
    const CpuFeatures& f = cpu_features();
    if (requested == Isa::best) return f.avx512 ? Isa::avx512 : f.avx2 ? Isa::avx2 : Isa::generic;
    if (requested == Isa::avx2 && !f.avx2)
        throw std::invalid_argument("this CPU (or this build) has no AVX2+FMA+F16C kernels");
    if (requested == Isa::avx512 && !f.avx512)
        throw std::invalid_argument("this CPU (or this build) has no AVX-512 (F, BW, VL) kernels");
    return requested;
}

}  // namespace ompq::detail
