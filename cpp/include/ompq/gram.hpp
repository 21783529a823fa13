// Gram accumulation K += X Xᵀ for a feature matrix X of shape n × d.
//
// Plain C++17: no Python, no torch. Inputs are float32, float16, bfloat16 (both
// passed as raw 16-bit patterns) or float64; K is float64. Products are summed
// in float32 over chunks of at most a few thousand columns and every chunk's
// partial sum is added to K in float64, so the rounding error grows with the
// chunk length, not with d (docs/KERNELS.md gives the accuracy test).
// The result does not depend on the number of threads.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ompq {

enum class DType { f32, f16, bf16, f64 };

// Instruction sets the kernels are compiled for. `best` picks the widest one
// this CPU supports; naming one it lacks throws std::invalid_argument.
enum class Isa { best, generic, avx2, avx512 };

struct GramOptions {
    int num_threads = 0;   // 0: OpenMP default (or 1 without OpenMP); never more than the work splits into
    Isa isa = Isa::best;
};

// Adds X Xᵀ to the n × n row-major float64 matrix k (both triangles).
// x points to n rows of d elements of `dtype`, row r starting at x + r * row_stride
// elements (row_stride >= d). Throws std::invalid_argument on bad sizes.
void gram_accumulate(const void* x, DType dtype, std::size_t n, std::size_t d,
                     std::size_t row_stride, double* k, const GramOptions& options = {});

// Names of the instruction sets usable on this CPU, narrowest first ("generic", "avx2", "avx512").
std::vector<std::string> available_isas();

// The instruction set `Isa::best` resolves to on this CPU.
std::string best_isa();

}  // namespace ompq
