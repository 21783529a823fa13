// Size arithmetic that refuses to wrap: products and sums of sizes throw std::invalid_argument (naming what was
// being sized) where the exact result does not fit in std::size_t, instead of returning a wrapped-around value.
#pragma once

#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>

namespace ompq {

inline std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
    if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a)
        throw std::invalid_argument(std::string(what) + ": the size overflows 64-bit arithmetic");
    return a * b;
}

inline std::size_t checked_add(std::size_t a, std::size_t b, const char* what) {
    if (b > std::numeric_limits<std::size_t>::max() - a)
        throw std::invalid_argument(std::string(what) + ": the size overflows 64-bit arithmetic");
    return a + b;
}

}  // namespace ompq
