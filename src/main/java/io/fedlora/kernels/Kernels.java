package io.fedlora.kernels;

import io.fedlora.tensor.Matrix;

/**
 * The compute operations behind fedlora: one interface, one implementation per backend
 * ({@code ScalarKernels}, the reference; {@code VectorKernels}; {@code CudaKernels}). Kernels
 * trust their arguments; {@link io.fedlora.Aggregator} validates them first.
 *
 * <p>Scales and weights arrive as float32 factors so that every backend does the same float32
 * arithmetic: accumulate with fused multiply-add, then multiply by the precomputed scale.
 */
public interface Kernels extends AutoCloseable {

    /** Short backend name: "scalar", "vector" or "cuda". */
    String name();

    /** One line of facts for the log: vector width and FMA, or GPU name and compute capability. */
    String description();

    /** A zeroed {@code rows x cols} accumulator owned by this backend. */
    Accumulator newAccumulator(int rows, int cols);

    /**
     * The fused batch aggregate: {@code out[i * cols + j] = (sum_k weights[k] * sources[k](i, j))
     * * (rowScale[i] * colScale[j])}, where a source contributes only inside its own
     * {@code rows x cols} corner (zero-padding is implicit). Sums are accumulated with FMA in
     * source order, exactly like repeated {@link Accumulator#add}. A null scale is all ones.
     *
     * @return -1 when every result is finite; else the index of a source holding NaN or
     *     infinity, or {@code sources.length} when finite inputs overflowed; {@code out} is then
     *     unspecified
     */
    int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights,
            float[] rowScale, float[] colScale);

    /**
     * Dense {@code rows x cols} copy of {@code src} with fill: {@code out[i * cols + j] = src(i, j)}
     * inside {@code src}'s corner, else {@code donor[i * cols + j]}, or 0 when donor is null.
     * This is padZero, padReplicate and truncation (rows/cols below src's); a pure copy,
     * bit-exact on every backend.
     */
    void pad(float[] out, int rows, int cols, Matrix src, float[] donor);

    /** True iff no element of {@code src} is NaN or infinite. */
    boolean allFinite(Matrix src);

    /**
     * {@code ||B A||_F^2} for {@code a = [r, n]}, {@code b = [m, r]}, without forming {@code B A}:
     * {@code sum((B^T B) .* (A A^T))}, two {@code r x r} Gram matrices.
     */
    double loraNormSquared(Matrix a, Matrix b);

    /** Releases backend resources (device memory, threads). */
    @Override
    default void close() {
    }
}
