package io.fedlora.product;

/** The reference Gram kernels: plain loops, float64 fused multiply-add; keep them obvious. */
public final class ScalarGram implements GramKernels {

    @Override
    public String name() {
        return "scalar";
    }

    @Override
    public void syrkUpper(double[] gram, double[] x, int rows, int s) {
        for (int r = 0; r < rows; r++) {
            int row = r * s;
            for (int p = 0; p < s; p++) {
                double xp = x[row + p];
                int g = p * s;
                for (int q = p; q < s; q++) {
                    gram[g + q] = Math.fma(xp, x[row + q], gram[g + q]);
                }
            }
        }
    }

    @Override
    public void gemm(double[] out, double[] x, int rows, int s, double[] coef, int t) {
        for (int r = 0; r < rows; r++) {
            int o = r * t;
            java.util.Arrays.fill(out, o, o + t, 0.0);
            for (int p = 0; p < s; p++) {
                double xp = x[r * s + p];
                int c = p * t;
                for (int j = 0; j < t; j++) {
                    out[o + j] = Math.fma(xp, coef[c + j], out[o + j]);
                }
            }
        }
    }
}
