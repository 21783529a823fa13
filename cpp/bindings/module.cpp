// pybind11 shell over the core: argument checks and conversion, nothing else.
// Every bad argument raises ompq_ext.errors.OmpqValueError before any kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>
#include <string>

#include "ompq/ompq.hpp"
#ifdef OMPQ_HAVE_CUDA
#include "ompq/cuda.hpp"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

[[noreturn]] void fail(const std::string& message) {
    // Leaked on purpose: a static py::object would be released after the interpreter is gone.
    static py::handle error = py::object(py::module_::import("ompq_ext.errors").attr("OmpqValueError")).release();
    PyErr_SetString(error.ptr(), message.c_str());
    throw py::error_already_set();
}

ompq::Isa parse_isa(const std::string& name) {
    if (name == "best") return ompq::Isa::best;
    if (name == "generic") return ompq::Isa::generic;
    if (name == "avx2") return ompq::Isa::avx2;
    if (name == "avx512") return ompq::Isa::avx512;
    fail("isa must be one of 'best', 'generic', 'avx2', 'avx512', got '" + name + "'");
}

ompq::Estimator parse_estimator(const std::string& name) {
    if (name == "biased") return ompq::Estimator::biased;
    if (name == "unbiased") return ompq::Estimator::unbiased;
    fail("estimator must be 'biased' or 'unbiased', got '" + name + "'");
}

// The dtype of the features: numpy's own, except bfloat16, which numpy lacks and
// which arrives as 16-bit integers with dtype="bf16".
ompq::DType feature_dtype(const py::array& x, const std::string& dtype) {
    if (!x.dtype().attr("isnative").cast<bool>())
        fail("features must be in the machine's byte order (use x.astype(x.dtype.newbyteorder('=')))");
    const char kind = x.dtype().kind();
    const auto size = x.itemsize();
    if (dtype == "bf16") {
        if ((kind == 'i' || kind == 'u') && size == 2) return ompq::DType::bf16;
        fail("dtype='bf16' needs the features as a 16-bit integer view (tensor.view(torch.int16).numpy())");
    }
    if (dtype != "auto") fail("dtype must be 'auto' or 'bf16', got '" + dtype + "'");
    if (kind == 'f' && size == 4) return ompq::DType::f32;
    if (kind == 'f' && size == 2) return ompq::DType::f16;
    if (kind == 'f' && size == 8) return ompq::DType::f64;
    fail("features must be float32, float16, float64 or bfloat16 (as int16 with dtype='bf16'), got dtype '" +
         std::string(py::str(x.dtype())) + "'");
}

// The arguments arrive as plain objects so that a list or a scalar gets our error, not pybind11's.
py::array as_array(const py::object& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        fail(std::string(name) + " must be a numpy array, got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
    return py::reinterpret_borrow<py::array>(obj);
}

void check_threads(int num_threads) {
    if (num_threads < 0 || num_threads > 4096) fail("num_threads must be in 0..4096 (0: the OpenMP default)");
}

py::array_t<double> checked_square(const py::array& k, py::ssize_t n, const char* name) {
    if (!k.dtype().attr("isnative").cast<bool>() || k.dtype().kind() != 'f' || k.itemsize() != 8)
        fail(std::string(name) + " must be a float64 array");
    if (k.ndim() != 2 || k.shape(0) != n || k.shape(1) != n)
        fail(std::string(name) + " must have shape (" + std::to_string(n) + ", " + std::to_string(n) + ")");
    if (!(k.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
    return py::reinterpret_borrow<py::array_t<double>>(k);
}

void gram_accumulate(const py::object& x_obj, const py::object& k_obj, const std::string& dtype,
                     const std::string& isa, int num_threads) {
    const py::array x = as_array(x_obj, "features");
    py::array k = as_array(k_obj, "gram");
    const ompq::DType dt = feature_dtype(x, dtype);
    if (x.ndim() != 2) fail("features must be 2-D (samples × features), got " + std::to_string(x.ndim()) + "-D");
    const py::ssize_t n = x.shape(0), d = x.shape(1), item = x.itemsize();
    if (n < 1) fail("features must have at least one sample (row)");
    if (x.strides(1) != item && d > 1) fail("each feature row must be contiguous (column stride == item size)");
    if (x.strides(0) % item != 0 || x.strides(0) < 0 || (n > 1 && x.strides(0) / item < d))
        fail("feature rows must not overlap and must be aligned to the item size");
    if (!k.writeable()) fail("gram must be writable");
    auto gram = checked_square(k, n, "gram");
    check_threads(num_threads);
    const std::size_t stride = n > 1 ? static_cast<std::size_t>(x.strides(0) / item) : static_cast<std::size_t>(d);
    ompq::GramOptions options;
    options.isa = parse_isa(isa);
    options.num_threads = num_threads;
    const void* data = x.data();
    double* out = gram.mutable_data();
    try {
        py::gil_scoped_release release;
        ompq::gram_accumulate(data, dt, static_cast<std::size_t>(n), static_cast<std::size_t>(d), stride, out,
                              options);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
}

py::array_t<double> center_gram(const py::object& k_obj, const std::string& estimator) {
    const py::array k = as_array(k_obj, "gram");
    if (k.ndim() != 2) fail("gram must be a 2-D square array");
    const py::ssize_t n = k.shape(0);
    auto gram = checked_square(k, n, "gram");
    const ompq::Estimator est = parse_estimator(estimator);
    py::array_t<double> out({n, n});
    try {
        ompq::center_gram(gram.data(), static_cast<std::size_t>(n), est, out.mutable_data());
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    return out;
}

py::array_t<double> orm_matrix(const py::object& grams_obj, const std::string& estimator, int num_threads) {
    const py::array grams = as_array(grams_obj, "grams");
    if (!grams.dtype().attr("isnative").cast<bool>() || grams.dtype().kind() != 'f' || grams.itemsize() != 8)
        fail("grams must be a float64 array");
    if (grams.ndim() != 3 || grams.shape(1) != grams.shape(2))
        fail("grams must have shape (layers, n, n)");
    if (!(grams.flags() & py::array::c_style)) fail("grams must be C-contiguous");
    const py::ssize_t L = grams.shape(0), n = grams.shape(1);
    if (L < 1) fail("grams must hold at least one layer");
    check_threads(num_threads);
    const ompq::Estimator est = parse_estimator(estimator);
    auto typed = py::reinterpret_borrow<py::array_t<double>>(grams);
    py::array_t<double> out({L, L});
    const double* in = typed.data();
    double* o = out.mutable_data();
    try {
        py::gil_scoped_release release;
        ompq::orm_matrix(in, static_cast<std::size_t>(L), static_cast<std::size_t>(n), est, o, num_threads);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    return out;
}

// ------------------------------------------------------------------ fake quantization

py::array_t<float> float32_array(const py::object& obj, const char* name) {
    const py::array a = as_array(obj, name);
    if (!a.dtype().attr("isnative").cast<bool>() || a.dtype().kind() != 'f' || a.itemsize() != 4)
        fail(std::string(name) + " must be a float32 array, got " + std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
    return py::reinterpret_borrow<py::array_t<float>>(a);
}

// [outer][channels][inner] view of x for per-channel quantization along `axis`
// (None: per-tensor), checked against the number of scales.
ompq::QuantLayout layout_of(const py::array& x, const py::object& axis, py::ssize_t num_scales) {
    ompq::QuantLayout layout;
    layout.inner = static_cast<std::size_t>(x.size());
    if (axis.is_none()) {
        if (num_scales != 1) fail("per-tensor quantization (axis=None) takes exactly one scale and zero point");
        return layout;
    }
    long a = axis.cast<long>();
    const long ndim = static_cast<long>(x.ndim());
    if (a < -ndim || a >= ndim) fail("axis " + std::to_string(a) + " is out of range for a " + std::to_string(ndim) + "-D tensor");
    if (a < 0) a += ndim;
    layout.outer = layout.channels = layout.inner = 1;
    for (long i = 0; i < ndim; ++i) {
        const auto extent = static_cast<std::size_t>(x.shape(i));
        if (i < a) layout.outer *= extent;
        else if (i == a) layout.channels = extent;
        else layout.inner *= extent;
    }
    if (static_cast<py::ssize_t>(layout.channels) != num_scales)
        fail("axis " + std::to_string(a) + " has " + std::to_string(layout.channels) + " channels but " +
             std::to_string(num_scales) + " scales were given");
    return layout;
}

struct QuantArgs {
    py::array_t<float> x, scale, zero;
    ompq::QuantLayout layout;
    ompq::QuantRange range;
    ompq::FakeQuantOptions options;
};

QuantArgs quant_args(const py::object& x, const py::object& scale, const py::object& zero_point,
                     const py::object& axis, long qmin, long qmax, const std::string& isa, int num_threads) {
    QuantArgs q{float32_array(x, "x"), float32_array(scale, "scale"), float32_array(zero_point, "zero_point"), {}, {}, {}};
    if (q.scale.ndim() != 1 || q.zero.ndim() != 1 || q.scale.size() != q.zero.size() || q.scale.size() < 1)
        fail("scale and zero_point must be 1-D with the same, non-zero length");
    q.layout = layout_of(q.x, axis, q.scale.size());
    q.range = {qmin, qmax};
    check_threads(num_threads);
    q.options.isa = parse_isa(isa);
    q.options.num_threads = num_threads;
    return q;
}

py::array_t<float> fake_quant_forward(const py::object& x, const py::object& scale, const py::object& zero_point,
                                      const py::object& axis, long qmin, long qmax, const py::object& out,
                                      const std::string& isa, int num_threads) {
    QuantArgs q = quant_args(x, scale, zero_point, axis, qmin, qmax, isa, num_threads);
    py::array_t<float> y;
    if (out.is_none()) {
        y = py::array_t<float>(std::vector<py::ssize_t>(q.x.shape(), q.x.shape() + q.x.ndim()));
    } else {
        y = float32_array(out, "out");
        if (y.size() != q.x.size() || !y.writeable()) fail("out must be a writable float32 array of x's size");
    }
    const float* xp = q.x.data();
    float* yp = y.mutable_data();
    const float *sp = q.scale.data(), *zp = q.zero.data();
    try {
        py::gil_scoped_release release;
        ompq::fake_quant_forward(xp, yp, q.layout, sp, zp, q.range, q.options);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    return y;
}

py::tuple fake_quant_backward(const py::object& x, const py::object& grad, const py::object& scale,
                              const py::object& zero_point, const py::object& axis, long qmin, long qmax,
                              float grad_factor, bool scale_grad, bool zero_point_grad, const std::string& isa,
                              int num_threads) {
    QuantArgs q = quant_args(x, scale, zero_point, axis, qmin, qmax, isa, num_threads);
    const py::array_t<float> gy = float32_array(grad, "grad");
    if (gy.ndim() != q.x.ndim() || !std::equal(gy.shape(), gy.shape() + gy.ndim(), q.x.shape()))
        fail("grad must have the shape of x");
    py::array_t<float> gx(std::vector<py::ssize_t>(q.x.shape(), q.x.shape() + q.x.ndim()));
    py::object gscale = py::none(), gzero = py::none();
    float *gsp = nullptr, *gzp = nullptr;
    if (scale_grad) {
        py::array_t<float> a(q.scale.size());
        gsp = a.mutable_data();
        gscale = a;
    }
    if (zero_point_grad) {
        py::array_t<float> a(q.zero.size());
        gzp = a.mutable_data();
        gzero = a;
    }
    const float *xp = q.x.data(), *gyp = gy.data(), *sp = q.scale.data(), *zp = q.zero.data();
    float* gxp = gx.mutable_data();
    try {
        py::gil_scoped_release release;
        ompq::fake_quant_backward(xp, gyp, gxp, gsp, gzp, q.layout, sp, zp, q.range, grad_factor, q.options);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    return py::make_tuple(gx, gscale, gzero);
}

// Scales (and, with return_errors, the float64 errors) of the MSE clipping search over `ratios` for
// each row of the 2-D float32 array w (one output channel per row).
py::object mse_weight_scales(const py::object& w_obj, const py::object& base_obj, const py::object& ratios_obj,
                             long qmin, long qmax, bool return_errors, const std::string& isa, int num_threads) {
    const py::array_t<float> w = float32_array(w_obj, "w"), base = float32_array(base_obj, "base"),
                             ratios = float32_array(ratios_obj, "ratios");
    if (w.ndim() != 2) fail("w must be 2-D (channels x elements per channel), got " + std::to_string(w.ndim()) + "-D");
    const py::ssize_t channels = w.shape(0), k = w.shape(1);
    if (base.ndim() != 1 || base.size() != channels)
        fail("base must be 1-D with one scale per row of w (" + std::to_string(channels) + "), got shape " +
             std::string(py::str(py::tuple(base_obj.attr("shape")))));
    if (ratios.ndim() != 1 || ratios.size() < 1) fail("ratios must be a non-empty 1-D array");
    check_threads(num_threads);
    ompq::FakeQuantOptions options;
    options.isa = parse_isa(isa);
    options.num_threads = num_threads;
    py::array_t<float> scales(channels);
    py::array_t<double> errors(return_errors ? channels : 0);
    const float *wp = w.data(), *bp = base.data(), *rp = ratios.data();
    float* sp = scales.mutable_data();
    double* ep = return_errors ? errors.mutable_data() : nullptr;
    try {
        py::gil_scoped_release release;
        ompq::mse_weight_scales(wp, static_cast<std::size_t>(channels), static_cast<std::size_t>(k), bp, rp,
                                static_cast<std::size_t>(ratios.size()), {qmin, qmax}, sp, ep, options);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    if (return_errors) return py::make_tuple(scales, errors);
    return std::move(scales);
}

py::array_t<std::int64_t> int64_array(const py::object& obj, const char* name) {
    const py::array a = as_array(obj, name);
    if (!a.dtype().attr("isnative").cast<bool>() || a.dtype().kind() != 'i' || a.itemsize() != 8)
        fail(std::string(name) + " must be an int64 array, got " + std::string(py::str(a.dtype())));
    if (a.ndim() != 1) fail(std::string(name) + " must be 1-D");
    if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
    return py::reinterpret_borrow<py::array_t<std::int64_t>>(a);
}

// The exact allocation under one budget, or two with costs2: (status, chosen index per group or None, states
// kept, peak states).
py::tuple solve_knapsack(const py::object& values_obj, const py::object& costs_obj, const py::object& tiebreaks_obj,
                         const py::object& offsets_obj, std::int64_t capacity, std::int64_t max_states,
                         double time_limit_s, const py::object& costs2_obj, std::int64_t capacity2) {
    const auto values = int64_array(values_obj, "values"), costs = int64_array(costs_obj, "costs"),
               tiebreaks = int64_array(tiebreaks_obj, "tiebreaks"), offsets = int64_array(offsets_obj, "offsets");
    const bool two = !costs2_obj.is_none();
    const auto costs2 = two ? int64_array(costs2_obj, "costs2") : py::array_t<std::int64_t>(0);
    const py::ssize_t groups = offsets.size() - 1, items = values.size();
    if (groups < 1) fail("offsets must hold at least two entries (one group)");
    if (costs.size() != items || tiebreaks.size() != items || (two && costs2.size() != items))
        fail("values, costs, costs2 and tiebreaks must have the same length");
    const std::int64_t* off = offsets.data();
    for (py::ssize_t g = 0; g < groups; ++g)
        if (off[g] < 0 || off[g + 1] <= off[g]) fail("offsets must start at 0 and increase strictly");
    if (off[0] != 0 || off[groups] != items) fail("offsets must start at 0 and end at the number of choices");
    if (max_states < 1) fail("max_states must be >= 1");
    if (std::isnan(time_limit_s)) fail("time_limit_s must be a number");
    py::array_t<std::int32_t> choices(groups);
    ompq::KnapsackResult result;
    const std::int64_t *v = values.data(), *c = costs.data(), *t = tiebreaks.data(), *c2 = two ? costs2.data() : nullptr;
    std::int32_t* out = choices.mutable_data();
    try {
        py::gil_scoped_release release;
        const auto g = static_cast<std::size_t>(groups);
        const auto states = static_cast<std::size_t>(max_states);
        result = two ? ompq::solve_knapsack2(v, c, c2, t, off, g, capacity, capacity2, states, time_limit_s, out)
                     : ompq::solve_knapsack(v, c, t, off, g, capacity, states, time_limit_s, out);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    static const char* names[] = {"optimal", "infeasible", "too_many_states", "time_limit"};
    const bool optimal = result.status == ompq::KnapsackStatus::optimal;
    return py::make_tuple(names[static_cast<int>(result.status)], optimal ? py::object(choices) : py::none(),
                          result.states, result.peak_states);
}

#ifdef OMPQ_HAVE_CUDA
// A device call's workspace: at least `need` bytes (none needed: anything goes).
void check_workspace(std::uintptr_t workspace, std::int64_t workspace_bytes, std::size_t need) {
    if (need > 0 && (workspace == 0 || workspace_bytes < 0 || static_cast<std::size_t>(workspace_bytes) < need))
        fail("workspace_bytes is " + std::to_string(workspace_bytes) + ", needs " + std::to_string(need));
}

// A size computation of the core; its overflow (std::invalid_argument) becomes OmpqValueError.
template <typename Size>
std::size_t sized(Size size) {
    try {
        return size();
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
}

// Runs a CUDA core call without the GIL; its exceptions (bad arguments, launch errors) become OmpqValueError.
template <typename Call>
void call_cuda(Call call) {
    try {
        py::gil_scoped_release release;
        call();
    } catch (const std::exception& e) {
        fail(e.what());
    }
}
#endif

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "ompq_ext C++ core: Gram accumulation, the ORM (linear CKA) matrix, fake quantization";
    m.attr("__version__") = ompq::version;
#ifdef _OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif
    m.def("gram_accumulate", &gram_accumulate, py::arg("x"), py::arg("gram"), py::arg("dtype") = "auto",
          py::arg("isa") = "best", py::arg("num_threads") = 0,
          "gram += x @ x.T in float64 for a 2-D float32/float16/float64 array x (bfloat16 as an int16 view "
          "with dtype='bf16'); rows must be contiguous.");
    m.def("center_gram", &center_gram, py::arg("gram"), py::arg("estimator") = "biased",
          "The centred Gram: H K H ('biased') or the U-centred form ('unbiased').");
    m.def("orm_matrix", &orm_matrix, py::arg("grams"), py::arg("estimator") = "biased",
          py::arg("num_threads") = 0,
          "Linear CKA between every pair of (layers, n, n) Grams from one product; NaN rows mark layers "
          "whose centred Gram is zero.");
    m.def("fake_quant_forward", &fake_quant_forward, py::arg("x"), py::arg("scale"), py::arg("zero_point"),
          py::arg("axis") = py::none(), py::arg("qmin") = -128, py::arg("qmax") = 127, py::arg("out") = py::none(),
          py::arg("isa") = "best", py::arg("num_threads") = 0,
          "(clamp(round(x/s) + z, qmin, qmax) - z) * s per channel along axis (None: per tensor); float32, "
          "bit for bit torch.fake_quantize_per_*_affine.");
    m.def("fake_quant_backward", &fake_quant_backward, py::arg("x"), py::arg("grad"), py::arg("scale"),
          py::arg("zero_point"), py::arg("axis") = py::none(), py::arg("qmin") = -128, py::arg("qmax") = 127,
          py::arg("grad_factor") = 1.0f, py::arg("scale_grad") = false, py::arg("zero_point_grad") = false,
          py::arg("isa") = "best", py::arg("num_threads") = 0,
          "(grad_x, grad_scale or None, grad_zero_point or None): straight-through with the clipping mask, "
          "and the LSQ gradients of scale and zero point.");
    m.def("mse_weight_scales", &mse_weight_scales, py::arg("w"), py::arg("base"), py::arg("ratios"),
          py::arg("qmin") = -128, py::arg("qmax") = 127, py::arg("return_errors") = false, py::arg("isa") = "best",
          py::arg("num_threads") = 0,
          "Per row c of the 2-D float32 w: the scale base[c] * ratios[r] whose symmetric fake quantization "
          "(zero point 0, as fake_quant_forward) has the least float64 sum of squared errors, the first "
          "such r on a tie; with return_errors, (scales, errors).");
#ifdef OMPQ_HAVE_CUDA
    m.attr("cuda_built") = true;
    m.def("cuda_device_available", &ompq::cuda::device_available, "Whether a CUDA device is visible.");
    m.def("gram_workspace_bytes", [](std::int64_t n, std::int64_t d) {
        if (n < 1 || d < 1) fail("n and d must be >= 1");
        return sized([&] { return ompq::cuda::gram_workspace_bytes(static_cast<std::size_t>(n), static_cast<std::size_t>(d)); });
    }, py::arg("n"), py::arg("d"), "Bytes of device workspace gram_accumulate_cuda needs.");
    m.def("gram_accumulate_cuda", [](std::uintptr_t x, const std::string& dtype, std::int64_t n, std::int64_t d,
                                     std::int64_t row_stride, std::uintptr_t gram, std::uintptr_t workspace,
                                     std::int64_t workspace_bytes, std::uintptr_t stream, const std::string& kernel) {
        ompq::cuda::GramKernel which;
        if (kernel == "auto") which = ompq::cuda::GramKernel::automatic;
        else if (kernel == "cuda_cores") which = ompq::cuda::GramKernel::cuda_cores;
        else if (kernel == "tensor_cores") which = ompq::cuda::GramKernel::tensor_cores;
        else fail("kernel must be 'auto', 'cuda_cores' or 'tensor_cores', got '" + kernel + "'");
        ompq::DType dt;
        if (dtype == "f32") dt = ompq::DType::f32;
        else if (dtype == "f16") dt = ompq::DType::f16;
        else if (dtype == "bf16") dt = ompq::DType::bf16;
        else fail("dtype must be 'f32', 'f16' or 'bf16', got '" + dtype + "'");
        if (n < 1 || d < 1 || row_stride < d) fail("need n >= 1, d >= 1 and row_stride >= d");
        if (x == 0 || gram == 0 || workspace == 0) fail("x, gram and workspace must be device pointers, got a null one");
        check_workspace(workspace, workspace_bytes, sized([&] {
            return ompq::cuda::gram_workspace_bytes(static_cast<std::size_t>(n), static_cast<std::size_t>(d)); }));
        call_cuda([&] {
            ompq::cuda::gram_accumulate(reinterpret_cast<const void*>(x), dt, static_cast<std::size_t>(n),
                                        static_cast<std::size_t>(d), static_cast<std::size_t>(row_stride),
                                        reinterpret_cast<double*>(gram), reinterpret_cast<void*>(workspace),
                                        static_cast<std::size_t>(workspace_bytes), reinterpret_cast<void*>(stream),
                                        which);
        });
    }, py::arg("x"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("row_stride"), py::arg("gram"),
       py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"), py::arg("kernel") = "auto",
       "gram (n x n float64, device) += X Xᵀ for device features X (n rows of row_stride elements), "
       "enqueued on `stream` (a cudaStream_t as an integer) without host synchronisation. kernel: 'auto' "
       "(tensor cores for 16-bit features on sm_80+), 'cuda_cores' or 'tensor_cores'.");
    m.def("orm_workspace_bytes", [](std::int64_t layers, std::int64_t n) {
        if (layers < 1 || n < 1) fail("layers and n must be >= 1");
        return sized([&] { return ompq::cuda::orm_workspace_bytes(static_cast<std::size_t>(layers), static_cast<std::size_t>(n)); });
    }, py::arg("layers"), py::arg("n"), "Bytes of device workspace orm_matrix_cuda needs.");
    m.def("orm_matrix_cuda", [](std::uintptr_t grams, std::int64_t layers, std::int64_t n, const std::string& estimator,
                                std::uintptr_t orm, std::uintptr_t workspace, std::int64_t workspace_bytes,
                                std::uintptr_t stream) {
        const ompq::Estimator est = parse_estimator(estimator);
        if (layers < 1 || layers > 65535) fail("layers must be in 1..65535, got " + std::to_string(layers));
        const std::int64_t least = est == ompq::Estimator::biased ? 2 : 4;
        if (n < least || n > 46340)
            fail("the " + estimator + " estimator needs n in " + std::to_string(least) + "..46340, got " +
                 std::to_string(n));
        if (grams == 0 || orm == 0 || workspace == 0) fail("grams, orm and workspace must be device pointers, got a null one");
        check_workspace(workspace, workspace_bytes, sized([&] {
            return ompq::cuda::orm_workspace_bytes(static_cast<std::size_t>(layers), static_cast<std::size_t>(n)); }));
        call_cuda([&] {
            ompq::cuda::orm_matrix(reinterpret_cast<const double*>(grams), static_cast<std::size_t>(layers),
                                   static_cast<std::size_t>(n), est, reinterpret_cast<double*>(orm),
                                   reinterpret_cast<void*>(workspace), static_cast<std::size_t>(workspace_bytes),
                                   reinterpret_cast<void*>(stream));
        });
    }, py::arg("grams"), py::arg("layers"), py::arg("n"), py::arg("estimator"), py::arg("orm"), py::arg("workspace"),
       py::arg("workspace_bytes"), py::arg("stream"),
       "orm (layers x layers float64, device) = linear CKA of the (layers, n, n) float64 device Grams, enqueued "
       "on `stream`; NaN rows mark layers whose centred Gram is zero.");
    auto cuda_layout = [](std::int64_t outer, std::int64_t channels, std::int64_t inner) {
        if (outer < 0 || channels < 1 || inner < 0) fail("need outer >= 0, channels >= 1 and inner >= 0");
        return ompq::QuantLayout{static_cast<std::size_t>(outer), static_cast<std::size_t>(channels),
                                 static_cast<std::size_t>(inner)};
    };
    auto cuda_range = [](long qmin, long qmax) {
        if (qmin > qmax) fail("qmin must be <= qmax");
        return ompq::QuantRange{qmin, qmax};
    };
    m.def("fake_quant_forward_cuda", [=](std::uintptr_t x, std::uintptr_t y, std::int64_t outer, std::int64_t channels,
                                         std::int64_t inner, std::uintptr_t scale, std::uintptr_t zero_point, long qmin,
                                         long qmax, std::uintptr_t stream) {
        const auto layout = cuda_layout(outer, channels, inner);
        const auto range = cuda_range(qmin, qmax);
        if (x == 0 || y == 0 || scale == 0 || zero_point == 0) fail("x, y, scale and zero_point must be device pointers");
        call_cuda([&] {
            ompq::cuda::fake_quant_forward(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), layout,
                                           reinterpret_cast<const float*>(scale), reinterpret_cast<const float*>(zero_point),
                                           range, reinterpret_cast<void*>(stream));
        });
    }, py::arg("x"), py::arg("y"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("scale"),
       py::arg("zero_point"), py::arg("qmin"), py::arg("qmax"), py::arg("stream"),
       "fake_quant_forward on float32 device buffers, enqueued on `stream`.");
    m.def("fake_quant_backward_workspace_bytes", [=](std::int64_t outer, std::int64_t channels, std::int64_t inner) {
        return sized([&] { return ompq::cuda::fake_quant_backward_workspace_bytes(cuda_layout(outer, channels, inner)); });
    }, py::arg("outer"), py::arg("channels"), py::arg("inner"));
    m.def("fake_quant_backward_cuda", [=](std::uintptr_t x, std::uintptr_t grad, std::uintptr_t grad_x,
                                          std::uintptr_t grad_scale, std::uintptr_t grad_zero, std::int64_t outer,
                                          std::int64_t channels, std::int64_t inner, std::uintptr_t scale,
                                          std::uintptr_t zero_point, long qmin, long qmax, float grad_factor,
                                          std::uintptr_t workspace, std::int64_t workspace_bytes, std::uintptr_t stream) {
        const auto layout = cuda_layout(outer, channels, inner);
        const auto range = cuda_range(qmin, qmax);
        if (x == 0 || grad == 0 || grad_x == 0 || scale == 0 || zero_point == 0)
            fail("x, grad, grad_x, scale and zero_point must be device pointers");
        if (grad_scale != 0 || grad_zero != 0)  // the workspace holds the scale / zero-point sums
            check_workspace(workspace, workspace_bytes, sized([&] { return ompq::cuda::fake_quant_backward_workspace_bytes(layout); }));
        call_cuda([&] {
            ompq::cuda::fake_quant_backward(
                reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(grad), reinterpret_cast<float*>(grad_x),
                reinterpret_cast<float*>(grad_scale), reinterpret_cast<float*>(grad_zero), layout,
                reinterpret_cast<const float*>(scale), reinterpret_cast<const float*>(zero_point), range, grad_factor,
                reinterpret_cast<void*>(workspace), static_cast<std::size_t>(workspace_bytes), reinterpret_cast<void*>(stream));
        });
    }, py::arg("x"), py::arg("grad"), py::arg("grad_x"), py::arg("grad_scale"), py::arg("grad_zero"), py::arg("outer"),
       py::arg("channels"), py::arg("inner"), py::arg("scale"), py::arg("zero_point"), py::arg("qmin"), py::arg("qmax"),
       py::arg("grad_factor"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
       "fake_quant_backward on float32 device buffers (grad_scale / grad_zero 0 for none), enqueued on `stream`.");
#else
    m.attr("cuda_built") = false;
#endif
    m.def("solve_knapsack", &solve_knapsack, py::arg("values"), py::arg("costs"), py::arg("tiebreaks"),
          py::arg("offsets"), py::arg("capacity"), py::arg("max_states") = std::int64_t{1} << 24,
          py::arg("time_limit_s") = 0.0, py::arg("costs2") = py::none(), py::arg("capacity2") = 0,
          "Exact multiple-choice knapsack (ompq/knapsack.hpp): one choice per group [offsets[g], offsets[g+1]), "
          "sum of costs <= capacity (and of costs2 <= capacity2 if given), largest (sum of values, sum of "
          "tiebreaks, choices lexicographically). Returns (status, choices or None, states kept, peak states).");
    m.def("available_isas", &ompq::available_isas, "Instruction sets whose kernels run on this CPU.");
    m.def("best_isa", &ompq::best_isa, "The instruction set used by default.");
}
