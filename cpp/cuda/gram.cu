// CUDA Gram accumulation: K += X Xᵀ in two deterministic stages.
//
// Stage 1: one block per (upper-triangle 32x32 output tile, chunk of kGramChunk columns) sums its
// tile in float32 and writes it to the workspace, on one of two paths:
//  * CUDA cores (float32, or any input when asked): 8x8 threads, each a 4x4 register block; the two
//    32-row panels are staged column-major through shared memory, so a thread reads its four rows
//    and its four columns of one column as two float4s and does 16 fused multiply-adds.
//  * tensor cores (float16 / bfloat16 on sm_80 and newer): 2x2 warps, each a 16x16 WMMA
//    accumulator in float32 (16-bit products are exact in float32), one per slice of 64 columns.
// Stage 2: one thread per upper-triangle output element adds the chunks' tiles in chunk order in
// float64 and updates both K(i, j) and K(j, i). No atomics: the result is bit-for-bit reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "ompq/checked.hpp"
#include "ompq/cuda.hpp"
#include "upper_pairs.cuh"

namespace ompq::cuda {
namespace {

constexpr int kTile = 32;       // output tile edge
constexpr int kSlice = 32;      // columns staged per step on the CUDA-core path
constexpr int kPanelLd = kTile + 4;  // column-major panels: 36 floats per column keep float4 reads aligned
constexpr int kSimtThreads = 64;     // 8 x 8 threads, 4 x 4 outputs each
constexpr int kTcSlice = 64;    // columns staged per step on the tensor-core path
// 16-bit row-major panels: WMMA wants a multiple of 8 elements (unused in builds before sm_80).
[[maybe_unused]] constexpr int kTcLd = kTcSlice + 8;
constexpr int kTcThreads = 128;      // 2 x 2 warps, one 16 x 16 accumulator each
// Columns per launch: the chunks of one launch are a grid dimension (at most 65535).
constexpr std::size_t kColumnsPerLaunch = 32768 * kGramChunk;

// A tile block's work: its upper-triangle tile pair (ti <= tj), the columns [begin, end) of its chunk,
// and where its float32 tile goes in the workspace ([chunk][pair][32][32]).
struct TileWork {
    int ti, tj;
    long long begin, end;
    float* out;
};

__device__ __forceinline__ TileWork tile_work(int tiles, long long d, float* partial) {
    TileWork w;
    upper_pair(blockIdx.x, tiles, &w.ti, &w.tj);
    w.begin = static_cast<long long>(blockIdx.y) * kGramChunk;
    w.end = min(w.begin + static_cast<long long>(kGramChunk), d);
    w.out = partial + (static_cast<long long>(blockIdx.y) * gridDim.x + blockIdx.x) * kTile * kTile;
    return w;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void __launch_bounds__(kSimtThreads) gram_tiles_cuda_cores(const T* __restrict__ x, int n, long long d,
                                                                      long long stride, int tiles,
                                                                      float* __restrict__ partial) {
    __shared__ __align__(16) float a[kSlice][kPanelLd];  // a[c][r] = X(row r of tile ti, column c)
    __shared__ __align__(16) float b[kSlice][kPanelLd];
    const TileWork w = tile_work(tiles, d, partial);
    const int ti = w.ti, tj = w.tj;
    const long long end = w.end;
    const int tid = threadIdx.x;
    const int tr = tid / 8, tc = tid % 8;  // this thread's outputs: rows 4 tr.., columns 4 tc..
    float acc[4][4] = {};
    for (long long c0 = w.begin; c0 < end; c0 += kSlice) {
        // A warp reads 32 consecutive columns of one row: coalesced.
        for (int e = tid; e < kTile * kSlice; e += kSimtThreads) {
            const int r = e / kSlice, c = e % kSlice;
            const long long col = c0 + c;
            const int ra = ti * kTile + r, rb = tj * kTile + r;
            a[c][r] = (ra < n && col < end) ? to_float(x[ra * stride + col]) : 0.f;
            b[c][r] = (rb < n && col < end) ? to_float(x[rb * stride + col]) : 0.f;
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < kSlice; ++c) {
            const float4 av = *reinterpret_cast<const float4*>(&a[c][tr * 4]);
            const float4 bv = *reinterpret_cast<const float4*>(&b[c][tc * 4]);
            const float ar[4] = {av.x, av.y, av.z, av.w};
            const float br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
        *reinterpret_cast<float4*>(&w.out[(tr * 4 + i) * kTile + tc * 4]) =
            make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

template <typename T>
__global__ void __launch_bounds__(kTcThreads) gram_tiles_tensor_cores(const T* __restrict__ x, int n, long long d,
                                                                      long long stride, int tiles,
                                                                      float* __restrict__ partial) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    __shared__ __align__(32) T a[kTile][kTcLd];  // a[r][c] = X(row r of tile ti, column c)
    __shared__ __align__(32) T b[kTile][kTcLd];
    const TileWork w = tile_work(tiles, d, partial);
    const int ti = w.ti, tj = w.tj;
    const long long end = w.end;
    const int tid = threadIdx.x, warp = tid / 32;
    const int wr = warp / 2, wc = warp % 2;  // this warp's 16 x 16 block of the tile
    const T zero = static_cast<T>(0.0f);
    // Tensor cores truncate when they add (Fasi et al. 2021, "Numerical behavior of NVIDIA tensor
    // cores"): each slice of 64 columns gets a fresh accumulator, added to the chunk's sum with
    // ordinary rounding, so the bias of truncation stays within a slice.
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, slice;
    wmma::fill_fragment(acc, 0.0f);
    for (long long c0 = w.begin; c0 < end; c0 += kTcSlice) {
        for (int e = tid; e < kTile * kTcSlice; e += kTcThreads) {
            const int r = e / kTcSlice, c = e % kTcSlice;
            const long long col = c0 + c;
            const int ra = ti * kTile + r, rb = tj * kTile + r;
            a[r][c] = (ra < n && col < end) ? x[ra * stride + col] : zero;
            b[r][c] = (rb < n && col < end) ? x[rb * stride + col] : zero;
        }
        __syncthreads();
        wmma::fill_fragment(slice, 0.0f);
#pragma unroll
        for (int k = 0; k < kTcSlice; k += 16) {
            // B = the rows of tile tj read column-major: B(k, j) = b[j][k], so A B = X_ti X_tjᵀ.
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, &a[wr * 16][k], kTcLd);
            wmma::load_matrix_sync(fb, &b[wc * 16][k], kTcLd);
            wmma::mma_sync(slice, fa, fb, slice);
        }
        // Fragments of one type share their element layout, so the sum is element by element.
#pragma unroll
        for (int t = 0; t < acc.num_elements; ++t) acc.x[t] += slice.x[t];
        __syncthreads();
    }
    wmma::store_matrix_sync(w.out + wr * 16 * kTile + wc * 16, acc, kTile, wmma::mem_row_major);
#else
    __trap();  // never launched: the host checks tensor_cores_usable() first
#endif
}

__global__ void gram_reduce(const float* __restrict__ partial, int n, int tiles, int pairs, int chunks,
                            double* __restrict__ k) {
    const int p = blockIdx.x;
    int ti, tj;
    upper_pair(p, tiles, &ti, &tj);
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

// Whether the current device runs the tensor-core kernel: compute capability 8.0+ (bfloat16 WMMA
// starts there), and the code loaded for it was compiled for 8.0+ (a build for older GPUs only
// would JIT PTX whose kernel body is the __trap()).
bool tensor_cores_usable() {
    int device = 0, major = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    if (major < 8) return false;
    cudaFuncAttributes attributes{};
    check(cudaFuncGetAttributes(&attributes, gram_tiles_tensor_cores<__half>), "cudaFuncGetAttributes");
    return attributes.ptxVersion >= 80;
}

template <typename T>
void launch_tiles(bool tensor_cores, const T* x, int n, long long d, long long stride, int tiles, int pairs,
                  int chunks, float* partial, cudaStream_t s) {
    const dim3 grid(pairs, chunks);
    if constexpr (!std::is_same_v<T, float>) {
        if (tensor_cores) {
            gram_tiles_tensor_cores<<<grid, kTcThreads, 0, s>>>(x, n, d, stride, tiles, partial);
            return;
        }
    }
    gram_tiles_cuda_cores<<<grid, kSimtThreads, 0, s>>>(x, n, d, stride, tiles, partial);
}

std::size_t element_bytes(DType dtype) { return dtype == DType::f32 ? 4 : 2; }

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
    const char* what = "gram_workspace_bytes";
    const std::size_t tiles = n / kTile + (n % kTile != 0);
    const std::size_t pairs = checked_mul(tiles, tiles + 1, what) / 2;
    const std::size_t columns = std::min(d, kColumnsPerLaunch);
    const std::size_t chunks = (columns + kGramChunk - 1) / kGramChunk;
    return checked_mul(checked_mul(chunks, pairs, what), kTile * kTile * sizeof(float), what);
}

void gram_accumulate(const void* x, DType dtype, std::size_t n, std::size_t d, std::size_t row_stride,
                     double* k, void* workspace, std::size_t workspace_bytes, void* stream, GramKernel kernel) {
    if (n == 0 || d == 0) return;
    if (dtype != DType::f32 && dtype != DType::f16 && dtype != DType::bf16)
        throw std::invalid_argument("CUDA gram_accumulate takes float32, float16 or bfloat16 features");
    if (row_stride < d) throw std::invalid_argument("row_stride must be >= d");
    const std::size_t tile_count = (n + kTile - 1) / kTile;
    if (tile_count * (tile_count + 1) / 2 > 2147483647u)  // tile pairs are a grid dimension
        throw std::invalid_argument("n too large: at most 2,097,120 samples");
    if (workspace_bytes < gram_workspace_bytes(n, d)) throw std::invalid_argument("workspace too small");
    if (reinterpret_cast<std::uintptr_t>(workspace) % 32 != 0)
        throw std::invalid_argument("the workspace must be 32-byte aligned");
    bool tensor_cores = false;
    if (kernel == GramKernel::tensor_cores) {
        if (dtype == DType::f32)
            throw std::invalid_argument("the tensor-core Gram takes float16 or bfloat16 features, not float32");
        if (!tensor_cores_usable())
            throw std::invalid_argument("the tensor-core Gram needs a GPU of compute capability 8.0 or newer "
                                        "and a build for it (CMAKE_CUDA_ARCHITECTURES 80 or newer)");
        tensor_cores = true;
    } else if (kernel == GramKernel::automatic) {
        tensor_cores = dtype != DType::f32 && tensor_cores_usable();
    }
    const auto tiles = static_cast<int>(tile_count);
    const auto pairs = static_cast<int>(tile_count * (tile_count + 1) / 2);
    const auto ni = static_cast<int>(n);
    const auto sl = static_cast<long long>(row_stride);
    auto s = static_cast<cudaStream_t>(stream);
    auto* partial = static_cast<float*>(workspace);
    const auto* bytes = static_cast<const unsigned char*>(x);
    // Very wide features go in slices of columns, each slice's chunks summed into K in order.
    for (std::size_t first = 0; first < d; first += kColumnsPerLaunch) {
        const std::size_t columns = std::min(kColumnsPerLaunch, d - first);
        const int chunks = static_cast<int>((columns + kGramChunk - 1) / kGramChunk);
        const auto dl = static_cast<long long>(columns);
        const void* slice = bytes + first * element_bytes(dtype);
        switch (dtype) {
            case DType::f32:
                launch_tiles(false, static_cast<const float*>(slice), ni, dl, sl, tiles, pairs, chunks, partial, s);
                break;
            case DType::f16:
                launch_tiles(tensor_cores, static_cast<const __half*>(slice), ni, dl, sl, tiles, pairs, chunks,
                             partial, s);
                break;
            default:
                launch_tiles(tensor_cores, static_cast<const __nv_bfloat16*>(slice), ni, dl, sl, tiles, pairs,
                             chunks, partial, s);
                break;
        }
        check(cudaGetLastError(), "Gram tile kernel launch");
        gram_reduce<<<pairs, dim3(kTile, kTile), 0, s>>>(partial, ni, tiles, pairs, chunks, k);
        check(cudaGetLastError(), "Gram reduce kernel launch");
    }
}

}  // namespace ompq::cuda
