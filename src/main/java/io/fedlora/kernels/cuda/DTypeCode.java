package io.fedlora.kernels.cuda;

import io.fedlora.tensor.DType;

/**
 * The element-type codes the kernels read as their {@code dtype} argument. Must match the
 * {@code FEDLORA_F32/BF16/F16} defines of {@code cuda/fedlora_common.cuh} ({@code
 * DTypeCodeTest} reads that file and fails when they differ). Explicit codes, not
 * {@code DType.ordinal()}, so that a new or reordered enum constant cannot silently change what
 * the kernels decode.
 */
final class DTypeCode {
    static final int F32 = 0;
    static final int BF16 = 1;
    static final int F16 = 2;

    private DTypeCode() {
    }

    static int of(DType dtype) {
        return switch (dtype) {
            case F32 -> F32;
            case BF16 -> BF16;
            case F16 -> F16;
        };
    }
}
