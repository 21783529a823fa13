// Internal: the column view of channels-last layouts, shared by the CPU driver (fake_quant.cpp) and
// the CUDA kernels (cpp/cuda/fake_quant.cu). When each channel's contiguous run is shorter than
// kShortRun elements, one block (or one sum) per run would cost more than the run itself; the
// tensor is read instead as rows of column_width(P) columns, a whole number of periods
// P = channels * inner, so column j always belongs to channel (j % P) / inner.
#pragma once

#include <cstddef>

#include "ompq/fake_quant.hpp"

namespace ompq::detail {

constexpr std::size_t kShortRun = 64;
constexpr std::size_t kRowWidth = 1024;  // short periods are repeated up to this width

// One channel: [outer][1][inner] is the same as one run of outer * inner elements.
inline QuantLayout merge_single_channel(const QuantLayout& layout) {
    return layout.channels == 1 ? QuantLayout{1, 1, layout.size()} : layout;
}

// For a layout after merge_single_channel.
inline bool short_runs(const QuantLayout& layout) { return layout.inner < kShortRun && layout.channels > 1; }

inline std::size_t column_width(std::size_t period) {
    return period <= kRowWidth ? period * (kRowWidth / period) : period;
}

}  // namespace ompq::detail
