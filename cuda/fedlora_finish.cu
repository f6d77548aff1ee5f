// Scales the weighted sums into the aggregate.
// Must match ScalarKernels' finish (Accumulator.finish, the last step of Kernels.weightedSum):
//   out(i, j) = sums(i, j) * rowScale[i] * colScale[j], a null scale being all ones,
// multiplied left to right in float32 (no FMA: there is no addition to fuse).
// out may equal sums (each thread reads and writes only its own cell).
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_finish(float* out, int outLd, const float* sums, int sumsLd,
                                          int rows, int cols, const float* rowScale,
                                          const float* colScale)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        float rowFactor = rowScale != 0 ? rowScale[i] : 1.0f;
        float colFactor = colScale != 0 ? colScale[j] : 1.0f;
        out[(long long) i * outLd + j] = sums[(long long) i * sumsLd + j] * rowFactor * colFactor;
    }
}
