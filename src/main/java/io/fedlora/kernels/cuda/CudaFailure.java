package io.fedlora.kernels.cuda;

import jcuda.driver.CUresult;

/**
 * A CUDA driver call that did not return {@code CUDA_SUCCESS}. Every driver call of the backend
 * goes through {@link #check}, so the backend never needs JCuda's process-wide exception switch
 * ({@code JCudaDriver.setExceptionsEnabled}), which would change the behaviour of every other
 * JCuda user in the JVM (STYLE: library code never flips JVM-wide switches).
 */
final class CudaFailure extends IllegalStateException {
    private final int result;

    private CudaFailure(String call, int result) {
        super(call + " failed: " + CUresult.stringFor(result));
        this.result = result;
    }

    private CudaFailure(String message, int result, boolean plain) {
        super(message);
        this.result = result;
    }

    /** Returns normally when {@code result} is {@code CUDA_SUCCESS}, else throws naming the call. */
    static void check(int result, String call) {
        if (result != CUresult.CUDA_SUCCESS) {
            throw new CudaFailure(call, result);
        }
    }

    /** A failure with a message of its own (a JIT log, an out-of-memory with the free bytes). */
    static CudaFailure withMessage(String message, int result) {
        return new CudaFailure(message, result, true);
    }

    int result() {
        return result;
    }

    boolean outOfMemory() {
        return result == CUresult.CUDA_ERROR_OUT_OF_MEMORY;
    }
}
