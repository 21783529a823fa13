// Numbering of the upper triangle (i <= j) of a count x count grid, row by row, shared by the
// Gram tiles and the ORM products: one block per pair.
#pragma once

namespace ompq::cuda {

// Pair p of the upper triangle -> (i, j), i <= j; p < count * (count + 1) / 2.
__device__ __forceinline__ void upper_pair(long long p, int count, int* i, int* j) {
    int row = 0;
    while (p >= count - row) {
        p -= count - row;
        ++row;
    }
    *i = row;
    *j = row + static_cast<int>(p);
}

}  // namespace ompq::cuda
