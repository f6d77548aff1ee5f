package io.fedlora.product;

/**
 * The two dense kernels behind product-space aggregation (DESIGN §9), on float64 panels packed
 * from the clients' float32 (or 16-bit) factors. Products of two float32 values are exact in
 * float64 and the sums are float64, so a Gram matrix carries no float32 rounding: the prototype
 * showed float32 accumulation loses every component below about {@code 3.5e-4 * kappa * sigma_1}
 * (PRODUCT_SPACE.md §4). One implementation per CPU backend: {@link ScalarGram}, the reference,
 * and {@code VectorGram} (loaded by class name, like the kernels backends).
 */
public interface GramKernels {

    /** "scalar" or "vector". */
    String name();

    /**
     * The upper triangle ({@code q >= p}) of {@code gram[p * s + q] += sum_{r < rows} x[r * s + p] * x[r * s + q]}:
     * one panel's share of {@code X^T X}. Entries below the diagonal are unspecified (the caller mirrors).
     */
    void syrkUpper(double[] gram, double[] x, int rows, int s);

    /** {@code out[r * t + j] = sum_{p < s} x[r * s + p] * coef[p * t + j]} for {@code r < rows, j < t}. */
    void gemm(double[] out, double[] x, int rows, int s, double[] coef, int t);
}
