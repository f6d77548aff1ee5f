package io.fedlora.kernels.cuda;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.kernels.Matrix;

/** Placeholder until the CUDA backend (issue 3) lands: it never claims to run. */
public final class CudaKernels implements Kernels {

    public CudaKernels() {
        throw new UnsupportedOperationException("the CUDA backend is not part of this build yet");
    }

    @Override public String name() { return "cuda"; }
    @Override public String description() { return "unavailable"; }
    @Override public Accumulator newAccumulator(int rows, int cols) { throw new UnsupportedOperationException(); }
    @Override public int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights, float[] rowScale, float[] colScale) { throw new UnsupportedOperationException(); }
    @Override public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) { throw new UnsupportedOperationException(); }
    @Override public boolean allFinite(Matrix src) { throw new UnsupportedOperationException(); }
    @Override public double loraNormSquared(Matrix a, Matrix b) { throw new UnsupportedOperationException(); }
}
