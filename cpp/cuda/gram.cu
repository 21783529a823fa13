// CUDA Gram accumulation: K += X Xᵀ in two deterministic stages.
//
// Stage 1: one block per (upper-triangle 32x32 output tile, chunk of kGramChunk columns). The
// block stages 32 x 32 slices of the two row panels through shared memory and accumulates its
// tile in float32 registers, each thread 4 outputs, then writes the tile to the workspace.
// Stage 2: one thread per upper-triangle output element adds the chunks' tiles in chunk order
// in float64 and updates both K(i, j) and K(j, i). No atomics, so the result is bit-for-bit
// reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "ompq/cuda.hpp"

namespace ompq::cuda {
namespace {

constexpr int kTile = 32;       // output tile edge
constexpr int kRowsPerThread = 4;  // block of 32 x 8 threads, 4 outputs each

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

// Upper-triangle tile pair number p -> (tile row ti, tile column tj), ti <= tj.
__device__ __forceinline__ void tile_pair(int p, int tiles, int* ti, int* tj) {
    int i = 0;
    while (p >= tiles - i) {
        p -= tiles - i;
        ++i;
    }
    *ti = i;
    *tj = i + p;
}

template <typename T>
__global__ void gram_tiles(const T* __restrict__ x, int n, long long d, long long stride, int tiles,
                           float* __restrict__ partial) {
    __shared__ float a[kTile][kTile + 1];
    __shared__ float b[kTile][kTile + 1];
    int ti, tj;
    tile_pair(blockIdx.x, tiles, &ti, &tj);
    const long long begin = static_cast<long long>(blockIdx.y) * kGramChunk;
    const long long end = begin + kGramChunk < d ? begin + kGramChunk : d;
    const int tx = threadIdx.x;  // 0..31: column of the output tile, and of the staged slice
    const int ty = threadIdx.y;  // 0..7
    float acc[kRowsPerThread] = {0.f, 0.f, 0.f, 0.f};
    for (long long c0 = begin; c0 < end; c0 += kTile) {
        for (int r = ty; r < kTile; r += blockDim.y) {
            const int ra = ti * kTile + r, rb = tj * kTile + r;
            const long long c = c0 + tx;
            a[r][tx] = (ra < n && c < end) ? load(x + ra * stride + c) : 0.f;
            b[r][tx] = (rb < n && c < end) ? load(x + rb * stride + c) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < kTile; ++c) {
            const float bv = b[tx][c];
#pragma unroll
            for (int q = 0; q < kRowsPerThread; ++q) acc[q] += a[ty + q * 8][c] * bv;
        }
        __syncthreads();
    }
    float* out = partial + (static_cast<long long>(blockIdx.y) * gridDim.x + blockIdx.x) * kTile * kTile;
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) out[(ty + q * 8) * kTile + tx] = acc[q];
}

__global__ void gram_reduce(const float* __restrict__ partial, int n, int tiles, int pairs, int chunks,
                            double* __restrict__ k) {
    const int p = blockIdx.x;
    int ti, tj;
    tile_pair(p, tiles, &ti, &tj);
    const int r = threadIdx.y, c = threadIdx.x;
    const int i = ti * kTile + r, j = tj * kTile + c;
    if (i >= n || j >= n || (ti == tj && j < i)) return;
    double sum = 0.0;
    for (int ch = 0; ch < chunks; ++ch)
        sum += static_cast<double>(partial[(static_cast<long long>(ch) * pairs + p) * kTile * kTile + r * kTile + c]);
    k[static_cast<long long>(i) * n + j] += sum;
    if (i != j) k[static_cast<long long>(j) * n + i] += sum;
}

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

}  // namespace

bool device_available() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return false;
    }
    return count > 0;
}

std::size_t gram_workspace_bytes(std::size_t n, std::size_t d) {
    const std::size_t tiles = (n + kTile - 1) / kTile;
    const std::size_t pairs = tiles * (tiles + 1) / 2;
    const std::size_t chunks = d == 0 ? 0 : (d + kGramChunk - 1) / kGramChunk;
    return chunks * pairs * kTile * kTile * sizeof(float);
}

void gram_accumulate(const void* x, DType dtype, std::size_t n, std::size_t d, std::size_t row_stride,
                     double* k, void* workspace, std::size_t workspace_bytes, void* stream) {
    if (n == 0 || d == 0) return;
    if (row_stride < d) throw std::invalid_argument("row_stride must be >= d");
    if (workspace_bytes < gram_workspace_bytes(n, d)) throw std::invalid_argument("workspace too small");
    const int tiles = static_cast<int>((n + kTile - 1) / kTile);
    const int pairs = tiles * (tiles + 1) / 2;
    const std::size_t chunks = (d + kGramChunk - 1) / kGramChunk;
    if (chunks > 65535) throw std::invalid_argument("d too large for one call: split the columns");
    auto s = static_cast<cudaStream_t>(stream);
    auto* partial = static_cast<float*>(workspace);
    const dim3 grid(pairs, static_cast<unsigned>(chunks)), block(kTile, 8);
    const auto ni = static_cast<int>(n);
    const auto dl = static_cast<long long>(d), sl = static_cast<long long>(row_stride);
    switch (dtype) {
        case DType::f32:
            gram_tiles<<<grid, block, 0, s>>>(static_cast<const float*>(x), ni, dl, sl, tiles, partial);
            break;
        case DType::f16:
            gram_tiles<<<grid, block, 0, s>>>(static_cast<const __half*>(x), ni, dl, sl, tiles, partial);
            break;
        case DType::bf16:
            gram_tiles<<<grid, block, 0, s>>>(static_cast<const __nv_bfloat16*>(x), ni, dl, sl, tiles, partial);
            break;
        default:
            throw std::invalid_argument("CUDA gram_accumulate takes float32, float16 or bfloat16 features");
    }
    check(cudaGetLastError(), "gram_tiles launch");
    gram_reduce<<<pairs, dim3(kTile, kTile), 0, s>>>(partial, ni, tiles, pairs, static_cast<int>(chunks), k);
    check(cudaGetLastError(), "gram_reduce launch");
}

}  // namespace ompq::cuda
