package io.fedlora.kernels.scalar;

import io.fedlora.DType;
import io.fedlora.kernels.CpuKernels;
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
    protected void axpy(float[] acc, int accOff, MemorySegment src, DType dtype, long srcOff, int n, float w) {
        for (int t = 0; t < n; t++) {
            acc[accOff + t] = Math.fma(w, dtype.get(src, srcOff + t), acc[accOff + t]);
        }
    }

    @Override
    protected boolean scale(float[] out, int outOff, float[] in, int inOff, int n, float rowFactor,
            float[] colScale, int colOff) {
        boolean finite = true;
        for (int t = 0; t < n; t++) {
            float factor = colScale == null ? rowFactor : rowFactor * colScale[colOff + t];
            float v = in[inOff + t] * factor;
            out[outOff + t] = v;
            finite &= Float.isFinite(v);
        }
        return finite;
    }

    @Override
    protected boolean finite(MemorySegment src, DType dtype, long srcOff, int n) {
        for (int t = 0; t < n; t++) {
            if (!Float.isFinite(dtype.get(src, srcOff + t))) {
                return false;
            }
        }
        return true;
    }

    @Override
    protected void load(float[] out, int outOff, MemorySegment src, DType dtype, long srcOff, int n) {
        for (int t = 0; t < n; t++) {
            out[outOff + t] = dtype.get(src, srcOff + t);
        }
    }

    @Override
    protected double dot(float[] x, int xOff, float[] y, int yOff, int n) {
        double s = 0;
        for (int t = 0; t < n; t++) {
            s += (double) x[xOff + t] * y[yOff + t];
        }
        return s;
    }
}
