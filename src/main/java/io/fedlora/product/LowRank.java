package io.fedlora.product;

/**
 * A best rank-R factorisation of one module's weighted average update, as LoRA factors:
 * {@code a} is {@code [rank, n]} and {@code b} is {@code [m, rank]}, float32, row-major, with
 * {@code outScale * B A} the approximation. Components are ordered by descending singular
 * value, so the first {@code r} of them are the best rank-r approximation (FlexLoRA's nested
 * truncation). Components {@code numericalRank..rank-1} carry no signal: their B columns are zero.
 *
 * @param sigma the kept singular values, descending ({@code numericalRank} of them)
 * @param normSquared {@code ||dW*||_F^2}, the sum of all squared singular values of the core
 * @param coefficients the output as a combination of the client factors, for the fidelity report
 */
public record LowRank(String module, int m, int n, int rank, float[] a, float[] b, double outScale, double[] sigma,
        int numericalRank, Route route, double normSquared, Coefficients coefficients) {

    /**
     * FlexLoRA redistribution (PRODUCT_SPACE.md §2.5): what a client of rank {@code r} that applies
     * its own LoRA scale {@code clientScale} receives, {@code {A[:r], B[:, :r] * outScale / clientScale}},
     * so that {@code clientScale * B_k A_k} is the best rank-r approximation. One factorisation
     * serves every client; the cost per client is a scaled copy.
     */
    public float[][] forClient(int r, double clientScale) {
        if (r < 1 || r > rank) {
            throw new IllegalArgumentException("module " + module + ": client rank " + r + " outside 1.." + rank);
        }
        float[] ak = java.util.Arrays.copyOf(a, r * n);
        float[] bk = new float[m * r];
        double f = outScale / clientScale;
        for (int row = 0; row < m; row++) {
            for (int i = 0; i < r; i++) {
                bk[row * r + i] = f == 1 ? b[row * rank + i] : (float) (b[row * rank + i] * f);
            }
        }
        return new float[][] {ak, bk};
    }

    /**
     * {@code sqrt(sum_{i >= r} sigma_i^2) / ||dW*||_F}: the Eckart-Young error of the best rank-r
     * approximation, free from the core SVD (resolved down to the route's floor).
     */
    public double eckartYoung(int r) {
        double kept = 0;
        for (int i = 0; i < Math.min(r, sigma.length); i++) {
            kept += sigma[i] * sigma[i];
        }
        return normSquared == 0 ? 0 : Math.sqrt(Math.max(normSquared - kept, 0) / normSquared);
    }
}
