package io.fedlora.kernels;

import io.fedlora.tensor.Matrix;

/**
 * Float32 weighted sums of one factor of one module, {@code rows x cols} row-major, owned by a
 * backend (a heap array for the CPU backends, device memory for CUDA). Not thread-safe: the
 * facade serialises access to each accumulator.
 */
public interface Accumulator extends AutoCloseable {

    int rows();

    int cols();

    /**
     * {@code sums[i][j] = fma(weight, src(i, j), sums[i][j])} for {@code i < src.rows(), j < src.cols()};
     * the rest is untouched. Requires {@code src.rows() <= rows()} and {@code src.cols() <= cols()}.
     * Must match {@code ScalarKernels} bit for bit on the CPU backends.
     */
    void add(Matrix src, float weight);

    /** Adds {@code other}'s sums (same backend, dimensions at most this one's) into these. */
    void add(Accumulator other);

    /** Grows to {@code rows x cols} (at least the current size), keeping the sums in place; new cells are zero. */
    void grow(int rows, int cols);

    /**
     * Writes {@code out[i * cols + j] = sums[i][j] * (rowScale[i] * colScale[j])} (the factor is
     * rounded to float32 first); a null scale is all ones. The sums are unchanged, so a round can be finished, read and continued.
     */
    void finish(float[] out, float[] rowScale, float[] colScale);

    /** Frees what the accumulator holds; idempotent. */
    @Override
    void close();
}
