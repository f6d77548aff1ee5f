package io.fedlora.kernels.cpu;

import io.fedlora.tensor.DType;
import java.lang.foreign.MemorySegment;

/**
 * The reference backend: plain Java loops, one element at a time, float32 with
 * {@link Math#fma}. Every other backend is tested against this one; keep it obvious.
 */
public final class ScalarKernels extends CpuKernels {

    public ScalarKernels() {
        this(1);
    }

    public ScalarKernels(int threads) {
        super(threads);
    }

    @Override
    public String name() {
        return "scalar";
    }

    @Override
    public String description() {
        return "scalar reference, " + threads() + " thread(s)";
    }

    @Override
    void axpy(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w) {
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            long x = srcOff + i * srcStride;
            for (int t = 0; t < n; t++) {
                acc[a + t] = Math.fma(w, dtype.get(src, x + t), acc[a + t]);
            }
        }
    }

    @Override
    boolean scale(float[] out, int outOff, int outStride, float[] in, int inOff, int inStride, int rows, int n,
            float[] rowScale, int rowOff, float[] colScale, int colOff) {
        boolean finite = true;
        for (int i = 0; i < rows; i++) {
            float rowFactor = rowScale == null ? 1f : rowScale[rowOff + i];
            for (int t = 0; t < n; t++) {
                float factor = colScale == null ? rowFactor : rowFactor * colScale[colOff + t];
                float v = in[inOff + i * inStride + t] * factor;
                out[outOff + i * outStride + t] = v;
                finite &= Float.isFinite(v);
            }
        }
        return finite;
    }

    @Override
    boolean finite(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        for (int i = 0; i < rows; i++) {
            for (int t = 0; t < n; t++) {
                if (!Float.isFinite(dtype.get(src, srcOff + i * srcStride + t))) {
                    return false;
                }
            }
        }
        return true;
    }

    @Override
    void load(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n) {
        for (int i = 0; i < rows; i++) {
            for (int t = 0; t < n; t++) {
                out[outOff + i * outStride + t] = dtype.get(src, srcOff + i * srcStride + t);
            }
        }
    }

    @Override
    void gramUpdate(double[] gram, float[] rows, int first, int count, int r) {
        for (int row = first; row < first + count; row++) {
            int x = row * r;
            for (int i = 0; i < r; i++) {
                double xi = rows[x + i];
                for (int j = 0; j < r; j++) {
                    gram[i * r + j] += xi * rows[x + j];
                }
            }
        }
    }
}
