// Weighted accumulate of one client tile into float32 sums.
// Must match ScalarKernels' accumulate (Accumulator.add, and each step of Kernels.weightedSum):
//   sums(i, j) = fmaf(weight, src(i, j), sums(i, j)) for i < rows, j < cols,
// one fused multiply-add per element in client order, src converted from its dtype on load.
// nonFinite (may be null) is set to 1 when a loaded element is NaN or infinite, so that
// weightedSum can name the first bad client without a second pass over its data.
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_accumulate(float* sums, int sumsLd, const void* src, int dtype,
                                              int srcLd, int rows, int cols, float weight,
                                              int* nonFinite)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        float value = fedlora_load(src, dtype, (long long) i * srcLd + j);
        if (nonFinite != 0 && !fedlora_is_finite(value)) {
            *nonFinite = 1; // every writer stores the same value, so the race is benign
        }
        float* cell = sums + (long long) i * sumsLd + j;
        *cell = fmaf(weight, value, *cell);
    }
}
