// BF16/F16/F32 source view to a dense float32 matrix, for cuBLAS (which reads float32 only).
// Must match DType.get (used by ScalarKernels.loraNormSquared to read its operands):
//   out(i, j) = src(i, j) converted to float32, bit for bit.
#include "fedlora_common.cuh"

extern "C" __global__ void fedlora_convert(float* out, int outLd, const void* src, int dtype,
                                           int srcLd, int rows, int cols)
{
    FEDLORA_FOR_EACH_CELL(i, j, rows, cols) {
        out[(long long) i * outLd + j] = fedlora_load(src, dtype, (long long) i * srcLd + j);
    }
}
