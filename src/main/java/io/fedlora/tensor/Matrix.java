package io.fedlora.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A strided row-major matrix view over little-endian data: element (i, j) is element number
 * {@code offset + i * rowStride + j} of {@code data}. Views let a kernel read the first rows of
 * a LoRA A factor or the first columns of a B factor (a cut to the global rank) without a copy.
 * Kernels trust views; the facade validates them.
 */
public record Matrix(MemorySegment data, DType dtype, long offset, int rows, int cols, int rowStride) {

    /** A dense rows x cols matrix starting at element 0. */
    public static Matrix dense(MemorySegment data, DType dtype, int rows, int cols) {
        return new Matrix(data, dtype, 0, rows, cols, cols);
    }

    /** A dense float32 matrix over a heap array. */
    public static Matrix of(float[] values, int rows, int cols) {
        return dense(MemorySegment.ofArray(values), DType.F32, rows, cols);
    }

    /** The top-left {@code rows x cols} corner of this view (same data, same stride). */
    public Matrix corner(int rows, int cols) {
        return new Matrix(data, dtype, offset, rows, cols, rowStride);
    }

    /** Element (i, j) converted to float32. */
    public float get(int i, int j) {
        return dtype.get(data, offset + (long) i * rowStride + j);
    }

    /** True when rows are back to back, so the view is one contiguous run of rows*cols elements. */
    public boolean contiguous() {
        return rowStride == cols || rows <= 1;
    }

    /** Element count. */
    public long size() {
        return (long) rows * cols;
    }
}
