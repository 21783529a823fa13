// CUDA kernels of the core (compiled only when CMake finds the toolkit: OMPQ_HAVE_CUDA).
//
// Plain C++ interface: device pointers and a cudaStream_t passed as void*, no torch. Every call
// only enqueues work on the given stream (no host synchronisation); launch errors throw
// std::runtime_error. The caller owns every buffer, including the workspace, which must be 32-byte
// aligned (cudaMalloc's and torch's allocations are).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ompq/gram.hpp"
#include "ompq/orthogonality.hpp"

namespace ompq::cuda {

// Whether a CUDA device is visible to this process (false, not an exception, without a driver).
bool device_available();

// Bytes of device workspace gram_accumulate needs for an n x d feature matrix.
std::size_t gram_workspace_bytes(std::size_t n, std::size_t d);

// Which units form the float32 partial sums. automatic: tensor cores for float16 / bfloat16 on a
// GPU of compute capability 8.0 or newer, CUDA cores otherwise. tensor_cores with float32
// features, or on an older GPU, throws std::invalid_argument (float32 stays exact on CUDA cores:
// TF32 would round the inputs to 10 bits).
enum class GramKernel { automatic, cuda_cores, tensor_cores };

// k (n x n row-major float64, device) += X Xᵀ, both triangles. x: n rows of d elements of
// `dtype` (f32, f16 or bf16), row r at x + r * row_stride elements. Products are summed in
// float32 over chunks of kGramChunk columns, in a fixed order, and the chunks' partial sums are
// added in float64 in chunk order: the result does not depend on timing, and matches the CPU
// core to float32-chunk rounding.
constexpr std::size_t kGramChunk = 1024;
void gram_accumulate(const void* x, DType dtype, std::size_t n, std::size_t d, std::size_t row_stride,
                     double* k, void* workspace, std::size_t workspace_bytes, void* stream,
                     GramKernel kernel = GramKernel::automatic);

// Bytes of device workspace orm_matrix needs for L Grams of n x n.
std::size_t orm_workspace_bytes(std::size_t num_layers, std::size_t n);

// The CPU core's ompq::orm_matrix on device buffers: grams (L consecutive n x n float64 Grams),
// orm (L x L float64). Centring, the product of the centred Grams and the normalisation each run
// in a fixed order (no atomics); a layer whose centred Gram is zero gets a NaN row and column.
// Needs n >= 2 (biased) or n >= 4 (unbiased).
void orm_matrix(const double* grams, std::size_t num_layers, std::size_t n, Estimator estimator, double* orm,
                void* workspace, std::size_t workspace_bytes, void* stream);

}  // namespace ompq::cuda

#include "ompq/fake_quant.hpp"

namespace ompq::cuda {

// The CPU core's fake_quant_forward on device buffers (float32, layout [outer][channels][inner]),
// bit for bit the same values; y must not alias x. The scales and zero points are not checked
// (reading them would synchronise): give positive finite scales and zero points on the grid.
void fake_quant_forward(const float* x, float* y, const QuantLayout& layout, const float* scale,
                        const float* zero_point, QuantRange range, void* stream);

// Device workspace fake_quant_backward needs for this layout when a scale or zero-point gradient is
// wanted (none otherwise).
std::size_t fake_quant_backward_workspace_bytes(const QuantLayout& layout);

// The CPU core's fake_quant_backward on device buffers: gx in one elementwise pass; with gscale
// and/or gzero (either may be null) the same pass forms the LSQ sums in float64 — per (row,
// segment of kQuantSegment elements) by a fixed tree, or, channels last, per column of the CPU
// core's column view over tiles of rows — then adds them per channel in a fixed order, so the
// result does not depend on timing.
constexpr std::size_t kQuantSegment = 8192;
void fake_quant_backward(const float* x, const float* gy, float* gx, float* gscale, float* gzero,
                         const QuantLayout& layout, const float* scale, const float* zero_point, QuantRange range,
                         float grad_factor, void* workspace, std::size_t workspace_bytes, void* stream);

}  // namespace ompq::cuda
