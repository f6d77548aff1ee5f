// Scales the weighted sums into the aggregate.
// Must match ScalarKernels.scale (Accumulator.finish, the last step of Kernels.weightedSum):
//   out(i, j) = sums(i, j) * (rowScale[i] * colScale[j]), a null scale being all ones,
// the factor rounded to float32 first, then one multiplication (no FMA: nothing to fuse).
// out may equal sums (each thread reads and writes only its own cell). nonFinite (may be null)
// is set to 1 when a result is NaN or infinite: weightedSum's "some result is not finite".
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_finish(float* out, int outLd, const float* sums, int sumsLd,
                                          int rows, int cols, const float* rowScale,
                                          const float* colScale, int* nonFinite)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        float rowFactor = rowScale != 0 ? rowScale[i] : 1.0f;
        float factor = colScale != 0 ? rowFactor * colScale[j] : rowFactor;
        float value = sums[(long long) i * sumsLd + j] * factor;
        out[(long long) i * outLd + j] = value;
        if (nonFinite != 0 && !fedlora_is_finite(value)) {
            *nonFinite = 1; // every writer stores the same value, so the race is benign
        }
    }
}
