// Finiteness check of a source view.
// Must match ScalarKernels.allFinite: nonFinite is set to 1 iff some src(i, j), i < rows,
// j < cols, is NaN or infinite; the caller zeroes it first and reads it after the launch.
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_all_finite(const void* src, int dtype, int srcLd, int rows,
                                              int cols, int* nonFinite)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        if (!fedlora_is_finite(fedlora_load(src, dtype, (long long) i * srcLd + j))) {
            *nonFinite = 1; // every writer stores the same value, so the race is benign
        }
    }
}
