// Sum of one double per thread over a block, by a fixed tree (the same order on every run), shared
// by the ORM and fake-quant kernels.
#pragma once

namespace ompq::cuda {

// kThreads: the block size (a power of two); shared: kThreads doubles of the caller's. Every thread
// gets the total (call it once per shared array: a second call on the same array would race).
template <int kThreads>
__device__ double block_sum(double value, double* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

}  // namespace ompq::cuda
