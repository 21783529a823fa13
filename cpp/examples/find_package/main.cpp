// Uses an installed ompq through find_package(ompq): one Gram from the CPU core against a plain
// float64 loop, and, where ompq::cuda was installed and a GPU is visible, the CUDA Gram against
// the CPU one. Exits non-zero if any of them disagrees.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "ompq/ompq.hpp"
#ifdef OMPQ_HAVE_CUDA
#include <cuda_runtime.h>

#include "ompq/cuda.hpp"
#endif

namespace {

double worst_relative(const std::vector<double>& got, const std::vector<double>& want) {
    double worst = 0.0, top = 0.0;
    for (double v : want) top = std::max(top, std::fabs(v));
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]) / top);
    return worst;
}

#ifdef OMPQ_HAVE_CUDA
// The CUDA Gram of x (n x d) on the default stream, copied back.
std::vector<double> cuda_gram(const std::vector<float>& x, std::size_t n, std::size_t d) {
    float* xd = nullptr;
    double* kd = nullptr;
    void* work = nullptr;
    const std::size_t bytes = ompq::cuda::gram_workspace_bytes(n, d);
    cudaMalloc(&xd, x.size() * sizeof(float));
    cudaMalloc(&kd, n * n * sizeof(double));
    cudaMalloc(&work, bytes);
    cudaMemcpy(xd, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemset(kd, 0, n * n * sizeof(double));
    ompq::cuda::gram_accumulate(xd, ompq::DType::f32, n, d, d, kd, work, bytes, nullptr);
    std::vector<double> k(n * n);
    cudaMemcpy(k.data(), kd, k.size() * sizeof(double), cudaMemcpyDeviceToHost);
    cudaFree(xd);
    cudaFree(kd);
    cudaFree(work);
    return k;
}
#endif

}  // namespace

int main() {
    const std::size_t n = 5, d = 3000;
    std::vector<float> x(n * d);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)));
    std::vector<double> k(n * n, 0.0), want(n * n, 0.0);
    ompq::gram_accumulate(x.data(), ompq::DType::f32, n, d, d, k.data());
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            for (std::size_t e = 0; e < d; ++e) want[i * n + j] += double(x[i * d + e]) * double(x[j * d + e]);
    const double cpu_error = worst_relative(k, want);
    std::printf("cpu gram: max relative error %.2e\n", cpu_error);
    if (!(cpu_error < 1e-6)) return 1;
#ifdef OMPQ_HAVE_CUDA
    if (ompq::cuda::device_available()) {
        const double gpu_error = worst_relative(cuda_gram(x, n, d), want);
        std::printf("cuda gram: max relative error %.2e\n", gpu_error);
        if (!(gpu_error < 1e-6)) return 1;
    } else {
        std::printf("cuda: built, no device visible\n");
    }
#else
    std::printf("cuda: not built\n");
#endif
    std::printf("consumer check passed\n");
    return 0;
}
