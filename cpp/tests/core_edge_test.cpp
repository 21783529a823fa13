// Drives every entry point of the C++ core over edge shapes (one sample, one column, tails that are not a
// multiple of any vector width, strided rows, every ISA and thread count) against plain scalar references, and
// its error paths. Buffers are std::vectors of exactly the size the API needs, so that a build with
// -DOMPQ_SANITIZE=ON (AddressSanitizer + UndefinedBehaviorSanitizer) reports any read or write past them.
// Exit status: 0 when every check passed, 1 otherwise (the sanitizers abort on their own reports).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ompq/ompq.hpp"
#ifdef OMPQ_HAVE_CUDA
#include "ompq/cuda.hpp"
#endif

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
    ++checks;
    if (!ok) {
        ++failures;
        if (failures <= 20) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    }
}

void expect_throw(const std::function<void()>& call, const std::string& what) {
    bool threw = false;
    try {
        call();
    } catch (const std::invalid_argument&) {
        threw = true;
    }
    check(threw, what + " must throw std::invalid_argument");
}

std::mt19937 rng(7);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

std::uint16_t to_bf16(float f) {  // truncation: any 16-bit pattern is a valid input
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<std::uint16_t>(u >> 16);
}
float from_bf16(std::uint16_t h) {
    const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
std::uint16_t to_f16(float f) {  // small normal values only (the test's range): exact bit layout
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const int exponent = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
    if (exponent <= 0) return static_cast<std::uint16_t>(sign);
    return static_cast<std::uint16_t>(sign | (static_cast<std::uint32_t>(exponent) << 10) | ((u >> 13) & 0x3ff));
}
float from_f16(std::uint16_t h) {
    const std::uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0) return sign ? -0.0f : 0.0f;
    const std::uint32_t u = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

std::vector<ompq::Isa> isas() {
    std::vector<ompq::Isa> out;
    for (const std::string& name : ompq::available_isas()) {
        if (name == "generic") out.push_back(ompq::Isa::generic);
        if (name == "avx2") out.push_back(ompq::Isa::avx2);
        if (name == "avx512") out.push_back(ompq::Isa::avx512);
    }
    return out;
}

void gram_tests() {
    for (ompq::DType dtype : {ompq::DType::f32, ompq::DType::f16, ompq::DType::bf16, ompq::DType::f64})
        for (std::size_t n : {1, 2, 3, 7, 16, 33})
            for (std::size_t d : {1, 2, 3, 15, 16, 17, 64, 130})
                for (std::size_t pad : {0, 3}) {
                    const std::size_t stride = d + pad, count = (n - 1) * stride + d;  // the last row unpadded
                    std::vector<double> values(count);
                    for (double& v : values) v = uniform(-2.0f, 2.0f);
                    std::vector<float> f32(count);
                    std::vector<std::uint16_t> half(count);
                    for (std::size_t i = 0; i < count; ++i) {
                        if (dtype == ompq::DType::f16) half[i] = to_f16(static_cast<float>(values[i])), values[i] = from_f16(half[i]);
                        if (dtype == ompq::DType::bf16) half[i] = to_bf16(static_cast<float>(values[i])), values[i] = from_bf16(half[i]);
                        f32[i] = static_cast<float>(values[i]);
                        if (dtype == ompq::DType::f32) values[i] = f32[i];
                    }
                    const void* x = dtype == ompq::DType::f64 ? static_cast<const void*>(values.data())
                                    : dtype == ompq::DType::f32 ? static_cast<const void*>(f32.data())
                                                                : static_cast<const void*>(half.data());
                    for (ompq::Isa isa : isas())
                        for (int threads : {1, 2}) {
                            std::vector<double> k(n * n, 1.0);  // accumulates: start from ones
                            ompq::gram_accumulate(x, dtype, n, d, stride, k.data(), {threads, isa});
                            for (std::size_t i = 0; i < n; ++i)
                                for (std::size_t j = 0; j < n; ++j) {
                                    double want = 1.0, scale = 1.0;
                                    for (std::size_t c = 0; c < d; ++c) {
                                        want += values[i * stride + c] * values[j * stride + c];
                                        scale += std::fabs(values[i * stride + c] * values[j * stride + c]);
                                    }
                                    check(std::fabs(k[i * n + j] - want) <= 1e-5 * scale,
                                          "gram n=" + std::to_string(n) + " d=" + std::to_string(d));
                                }
                        }
                }
    std::vector<float> x(4, 1.0f);
    std::vector<double> k(4);
    expect_throw([&] { ompq::gram_accumulate(x.data(), ompq::DType::f32, 2, 2, 1, k.data()); }, "gram row_stride < d");
    expect_throw([&] { ompq::gram_accumulate(nullptr, ompq::DType::f32, 2, 2, 2, k.data()); }, "gram null x");
}

void orm_tests() {
    for (std::size_t layers : {1, 2, 5})
        for (std::size_t n : {2, 3, 4, 9})
            for (ompq::Estimator est : {ompq::Estimator::biased, ompq::Estimator::unbiased}) {
                if (est == ompq::Estimator::unbiased && n < 4) continue;
                std::vector<double> grams(layers * n * n, 0.0);
                for (std::size_t l = 0; l < layers; ++l) {
                    const std::size_t d = 3 + l;
                    std::vector<double> f(n * d);
                    for (double& v : f) v = uniform(-1, 1);
                    for (std::size_t i = 0; i < n; ++i)
                        for (std::size_t j = 0; j < n; ++j)
                            for (std::size_t c = 0; c < d; ++c) grams[(l * n + i) * n + j] += f[i * d + c] * f[j * d + c];
                }
                for (int threads : {1, 2}) {
                    std::vector<double> orm(layers * layers);
                    ompq::orm_matrix(grams.data(), layers, n, est, orm.data(), threads);
                    for (std::size_t a = 0; a < layers; ++a)
                        for (std::size_t b = 0; b < layers; ++b) {
                            const double v = orm[a * layers + b];
                            if (n == 2 || (est == ompq::Estimator::unbiased && n == 4)) continue;  // may be degenerate
                            check(v == orm[b * layers + a], "orm symmetric");
                            check(a != b || std::fabs(v - 1.0) < 1e-12, "orm diagonal 1");
                        }
                }
            }
    std::vector<double> bad(2 * 3 * 3, 1.0), orm(4);
    bad[5] = std::nan("");
    expect_throw([&] { ompq::orm_matrix(bad.data(), 2, 3, ompq::Estimator::biased, orm.data()); }, "orm NaN Gram");
    expect_throw([&] { ompq::orm_matrix(bad.data(), 0, 3, ompq::Estimator::biased, orm.data()); }, "orm no layers");
}

float reference_fake_quant(float x, float s, float z, long qmin, long qmax) {
    const float inv = 1.0f / s;
    float q = std::nearbyint(x * inv) + z;
    q = q < static_cast<float>(qmin) ? static_cast<float>(qmin) : (q > static_cast<float>(qmax) ? static_cast<float>(qmax) : q);
    return (q - z) * s;
}

void fake_quant_tests() {
    struct Shape { std::size_t outer, channels, inner; };
    for (Shape shape : {Shape{1, 1, 1}, Shape{1, 1, 17}, Shape{2, 3, 5}, Shape{1, 7, 1}, Shape{4, 5, 33}, Shape{3, 2, 0},
                        Shape{1, 1, 1000}, Shape{2, 16, 16}})
        for (ompq::QuantRange range : {ompq::QuantRange{-2, 1}, ompq::QuantRange{-8, 7}, ompq::QuantRange{-128, 127},
                                       ompq::QuantRange{0, 15}})
            for (ompq::Isa isa : isas())
                for (int threads : {1, 2}) {
                    const ompq::QuantLayout layout{shape.outer, shape.channels, shape.inner};
                    const std::size_t size = layout.size();
                    const std::size_t room = size == 0 ? 1 : size;  // an empty tensor still has a (non-null) buffer
                    std::vector<float> x(room), y(room), gy(room), gx(room), scale(shape.channels), zero(shape.channels);
                    for (float& v : x) v = uniform(-3, 3);
                    for (float& v : gy) v = uniform(-1, 1);
                    for (std::size_t c = 0; c < shape.channels; ++c) {
                        scale[c] = uniform(0.05f, 0.5f);
                        zero[c] = range.qmin == 0 ? 3.0f : 0.0f;
                    }
                    const ompq::FakeQuantOptions options{threads, isa};
                    ompq::fake_quant_forward(x.data(), y.data(), layout, scale.data(), zero.data(), range, options);
                    std::vector<float> gscale(shape.channels), gzero(shape.channels);
                    ompq::fake_quant_backward(x.data(), gy.data(), gx.data(), gscale.data(), gzero.data(), layout,
                                              scale.data(), zero.data(), range, 1.0f, options);
                    for (std::size_t c = 0; c < shape.channels; ++c) {
                        double want_scale = 0.0;
                        for (std::size_t o = 0; o < shape.outer; ++o)
                            for (std::size_t i = 0; i < shape.inner; ++i) {
                                const std::size_t at = (o * shape.channels + c) * shape.inner + i;
                                const float s = scale[c], z = zero[c], want = reference_fake_quant(x[at], s, z, range.qmin, range.qmax);
                                check(y[at] == want, "fake_quant_forward element");
                                const float r = std::nearbyint(x[at] * (1.0f / s)) + z;
                                const bool inside = r >= static_cast<float>(range.qmin) && r <= static_cast<float>(range.qmax);
                                check(gx[at] == (inside ? gy[at] : 0.0f), "fake_quant_backward mask");
                                const double d = inside ? static_cast<double>(std::nearbyint(x[at] * (1.0f / s))) - static_cast<double>(x[at]) / s
                                                 : (r < static_cast<float>(range.qmin) ? range.qmin - z : range.qmax - z);
                                want_scale += static_cast<double>(gy[at]) * d;
                            }
                        check(std::fabs(gscale[c] - want_scale) <= 1e-4 * (1.0 + std::fabs(want_scale)), "LSQ scale gradient");
                    }
                }
    std::vector<float> x(4), y(4), scale{0.0f};
    std::vector<float> zero{0.0f};
    expect_throw([&] { ompq::fake_quant_forward(x.data(), y.data(), {1, 1, 4}, scale.data(), zero.data(), {-8, 7}); },
                 "fake_quant zero scale");
    scale[0] = 1.0f;
    expect_throw([&] { ompq::fake_quant_forward(x.data(), y.data(), {1, 1, 4}, scale.data(), zero.data(), {7, -8}); },
                 "fake_quant qmin > qmax");
}

void mse_scale_tests() {
    for (std::size_t channels : {1, 3})
        for (std::size_t k : {1, 5, 40, 129})
            for (ompq::Isa isa : isas()) {
                std::vector<float> w(channels * k), base(channels), ratios{1.0f, 0.9f, 0.75f, 0.5f}, scales(channels);
                std::vector<double> errors(channels);
                for (float& v : w) v = uniform(-1, 1);
                for (float& b : base) b = 1.0f / 7.0f;
                ompq::mse_weight_scales(w.data(), channels, k, base.data(), ratios.data(), ratios.size(), {-8, 7},
                                        scales.data(), errors.data(), {1, isa});
                for (std::size_t c = 0; c < channels; ++c) {
                    double best = 1e300;
                    for (float r : ratios) {
                        const float s = base[c] * r;
                        double e = 0;
                        for (std::size_t i = 0; i < k; ++i) {
                            const double diff = reference_fake_quant(w[c * k + i], s, 0.0f, -8, 7) - static_cast<double>(w[c * k + i]);
                            e += diff * diff;
                        }
                        best = std::min(best, e);
                    }
                    check(std::fabs(errors[c] - best) <= 1e-9 * (1.0 + best), "mse_weight_scales least error");
                }
            }
}

void knapsack_tests() {
    // groups with 1..3 choices; brute force over every combination
    for (int trial = 0; trial < 300; ++trial) {
        const std::size_t groups = 1 + trial % 5;
        std::vector<std::int64_t> offsets{0}, values, costs, costs2, ties;
        for (std::size_t g = 0; g < groups; ++g) {
            const int k = 1 + static_cast<int>(rng() % 3);
            for (int j = 0; j < k; ++j) {
                values.push_back(static_cast<std::int64_t>(rng() % 21) - 10);
                costs.push_back(static_cast<std::int64_t>(rng() % 7));
                costs2.push_back(static_cast<std::int64_t>(rng() % 7));
                ties.push_back(static_cast<std::int64_t>(rng() % 3));
            }
            offsets.push_back(static_cast<std::int64_t>(values.size()));
        }
        const std::int64_t capacity = static_cast<std::int64_t>(rng() % 15), capacity2 = static_cast<std::int64_t>(rng() % 15);
        for (bool two : {false, true}) {
            std::vector<std::int32_t> choices(groups, -1);
            const ompq::KnapsackResult r = two
                ? ompq::solve_knapsack2(values.data(), costs.data(), costs2.data(), ties.data(), offsets.data(), groups,
                                        capacity, capacity2, 1u << 20, 0.0, choices.data())
                : ompq::solve_knapsack(values.data(), costs.data(), ties.data(), offsets.data(), groups, capacity,
                                       1u << 20, 0.0, choices.data());
            // brute force: the best value within the capacities
            std::int64_t best = INT64_MIN;
            std::vector<std::int64_t> pick(groups, 0);
            for (;;) {
                std::int64_t v = 0, c = 0, c2 = 0;
                for (std::size_t g = 0; g < groups; ++g) {
                    const std::int64_t i = offsets[g] + pick[g];
                    v += values[i], c += costs[i], c2 += costs2[i];
                }
                if (c <= capacity && (!two || c2 <= capacity2)) best = std::max(best, v);
                std::size_t g = 0;
                while (g < groups && ++pick[g] == offsets[g + 1] - offsets[g]) pick[g++] = 0;
                if (g == groups) break;
            }
            if (best == INT64_MIN) {
                check(r.status == ompq::KnapsackStatus::infeasible, "knapsack infeasible");
                continue;
            }
            check(r.status == ompq::KnapsackStatus::optimal, "knapsack optimal");
            std::int64_t v = 0, c = 0, c2 = 0;
            for (std::size_t g = 0; g < groups; ++g) {
                const std::int64_t i = offsets[g] + choices[g];
                v += values[i], c += costs[i], c2 += costs2[i];
            }
            check(v == best && c <= capacity && (!two || c2 <= capacity2), "knapsack value and capacity");
        }
    }
    {  // values at the documented limit: one group of -2^61 and 2^61 (a range of 2^62) is accepted and solved
        const std::int64_t big = std::int64_t{1} << 61;
        std::vector<std::int64_t> v{-big, big, 0}, c{0, 1, 0}, t{0, 0, 0}, o{0, 2, 3};
        std::vector<std::int32_t> picks(2, -1);
        const ompq::KnapsackResult r = ompq::solve_knapsack(v.data(), c.data(), t.data(), o.data(), 2, 1, 1000, 0, picks.data());
        check(r.status == ompq::KnapsackStatus::optimal && picks[0] == 1, "knapsack at the value limit");
        std::vector<std::int64_t> w{-(std::int64_t{1} << 62), std::int64_t{1} << 62}, c2{0, 1}, t2{0, 0}, o2{0, 2};
        expect_throw([&] { ompq::solve_knapsack(w.data(), c2.data(), t2.data(), o2.data(), 1, 1, 1000, 0, picks.data()); },
                     "knapsack value range over 2^62");
    }
    std::vector<std::int64_t> offsets{0, 0}, none;
    std::vector<std::int32_t> choices(1);
    expect_throw([&] { ompq::solve_knapsack(none.data(), none.data(), none.data(), offsets.data(), 1, 5, 100, 0, choices.data()); },
                 "knapsack empty group");
}

void workspace_tests() {
#ifdef OMPQ_HAVE_CUDA  // host-side arithmetic of the CUDA entry points: no device needed
    check(ompq::cuda::orm_workspace_bytes(3, 4) == (3 * 16 + 3 * 8 + 3 + 9) * sizeof(double), "orm workspace");
    check(ompq::cuda::gram_workspace_bytes(64, 1000) > 0, "gram workspace");
    expect_throw([] { ompq::cuda::gram_workspace_bytes(std::size_t{1} << 62, std::size_t{1} << 62); }, "gram workspace overflow");
    expect_throw([] { ompq::cuda::orm_workspace_bytes(std::size_t{1} << 40, std::size_t{1} << 40); }, "orm workspace overflow");
    expect_throw([] { ompq::cuda::fake_quant_backward_workspace_bytes({std::size_t{1} << 62, std::size_t{1} << 62, 4}); },
                 "fake-quant workspace overflow");
    expect_throw([] { ompq::cuda::fake_quant_backward_workspace_bytes({1, std::size_t{1} << 32, std::size_t{1} << 32}); },
                 "fake-quant workspace of a tensor too large");
#endif
}

}  // namespace

int main() {
    workspace_tests();
    gram_tests();
    orm_tests();
    fake_quant_tests();
    mse_scale_tests();
    knapsack_tests();
    std::printf("core edge tests: %d checks, %d failed (ISAs:", checks, failures);
    for (const std::string& name : ompq::available_isas()) std::printf(" %s", name.c_str());
    std::printf(")\n");
    return failures == 0 ? 0 : 1;
}
