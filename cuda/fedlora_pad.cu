// Dense copy of a source view with fill: padZero, padReplicate and truncation in one kernel.
// Must match ScalarKernels.pad bit for bit (a pure copy, no arithmetic):
//   out(i, j) = src(i, j) inside src's srcRows x srcCols corner,
//               else donor(i, j), or 0 when donor is null.
// Also used to copy an accumulator's sums into a larger one (Accumulator.grow).
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_pad(float* out, int outLd, int rows, int cols, const void* src,
                                       int dtype, int srcLd, int srcRows, int srcCols,
                                       const float* donor, int donorLd)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        float value;
        if (i < srcRows && j < srcCols) {
            value = fedlora_load(src, dtype, (long long) i * srcLd + j);
        } else if (donor != 0) {
            value = donor[(long long) i * donorLd + j];
        } else {
            value = 0.0f;
        }
        out[(long long) i * outLd + j] = value;
    }
}
