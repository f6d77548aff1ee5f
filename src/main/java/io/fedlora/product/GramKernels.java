package io.fedlora.product;

/**
 * The two dense kernels behind product-space aggregation (DESIGN §9), on float64 panels packed
 * from the clients' float32 (or 16-bit) factors. Products of two float32 values are exact in
 * float64 and the sums are float64, so a Gram matrix carries no float32 rounding: the prototype
 * showed float32 accumulation loses every component below about {@code 3.5e-4 * kappa * sigma_1}
 * (PRODUCT_SPACE.md §4). One implementation per backend: {@link ScalarGram}, the reference,
 * {@code VectorGram} (loaded by class name, like the kernels backends), and the CUDA backend's
 * {@code io.fedlora.kernels.cuda.CudaGram} (cuBLAS, float64; also by name, with the backend's
 * instance: {@link ProductSpace#gramKernelsFor(io.fedlora.kernels.Kernels)}).
 *
 * <p>{@link ProductSpace} feeds panels through {@link #openGram} and {@link #openProduct}, so that an
 * implementation can keep a sum where it computes it (the device: one download per Gram matrix,
 * not one per panel). Their defaults run {@link #syrkUpper} and {@link #gemm} on host arrays.
 */
public interface GramKernels {

    /** "scalar", "vector" or "cuda". */
    String name();

    /**
     * The upper triangle ({@code q >= p}) of {@code gram[p * s + q] += sum_{r < rows} x[r * s + p] * x[r * s + q]}:
     * one panel's share of {@code X^T X}. Entries below the diagonal are unspecified (the caller mirrors).
     */
    void syrkUpper(double[] gram, double[] x, int rows, int s);

    /** {@code out[r * t + j] = sum_{p < s} x[r * s + p] * coef[p * t + j]} for {@code r < rows, j < t}. */
    void gemm(double[] out, double[] x, int rows, int s, double[] coef, int t);

    /**
     * How many threads may feed one Gram matrix or product at once, each part through its own
     * {@link #openGram} (parts are summed on the host in part order) and disjoint rows of one
     * {@link #openProduct}. The host kernels: any number; a device that serialises its calls: 1.
     */
    default int maxParts() {
        return Integer.MAX_VALUE;
    }

    /**
     * A sum of {@code X^T X} over panels X ({@code rows x s}, row-major float64), started at zero.
     * One part's: used by one thread at a time. The default sums on the host with {@link #syrkUpper}.
     */
    default GramSum openGram(int s) {
        GramKernels kernels = this;
        double[] gram = new double[Math.multiplyExact(s, s)];
        return new GramSum() {
            @Override
            public void add(double[] x, int rows) {
                kernels.syrkUpper(gram, x, rows, s);
            }

            @Override
            public double[] upper() {
                return gram;
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * The product {@code out (length x t) = X (length x s) * coef (s x t)}, row-major, built from
     * panels of X's rows; {@code add} may be called from {@link #maxParts} threads at once for
     * disjoint rows. The default multiplies on the host with {@link #gemm}.
     */
    default PanelProduct openProduct(int length, int s, double[] coef, int t) {
        GramKernels kernels = this;
        double[] out = new double[Math.multiplyExact(length, t)];
        return new PanelProduct() {
            @Override
            public void add(double[] x, int first, int rows) {
                double[] y = new double[rows * t];
                kernels.gemm(y, x, rows, s, coef, t);
                System.arraycopy(y, 0, out, first * t, rows * t);
            }

            @Override
            public double[] result() {
                return out;
            }

            @Override
            public void close() {
            }
        };
    }

    /** See {@link #openGram}. Close it on every path: a device implementation frees its memory there. */
    interface GramSum extends AutoCloseable {
        /** Adds {@code X^T X} of panel rows {@code 0 .. rows} of {@code x} (row stride s). */
        void add(double[] x, int rows);

        /** The sum's upper triangle ({@code q >= p} of {@code [p * s + q]}); entries below it unspecified. */
        double[] upper();

        @Override
        void close();
    }

    /** See {@link #openProduct}. Close it on every path. */
    interface PanelProduct extends AutoCloseable {
        /** Rows {@code first .. first + rows} of the product, from panel rows {@code 0 .. rows} of {@code x}. */
        void add(double[] x, int first, int rows);

        /** The whole product, once every row was added. */
        double[] result();

        @Override
        void close();
    }
}
