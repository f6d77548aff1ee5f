package io.fedlora.product;

/**
 * The float64 Gram matrices of one module's stacks, {@code G_B = Bs^T Bs} and {@code G_A = As As^T}
 * ({@code S x S}, row-major, full), with what the product-space algorithms need to read them: the
 * clients' ranks, where each client's block starts, the normalised weights {@code w_k = p_k / P}
 * and the folded scales {@code s_k}. One pair serves NORM's weights, the fidelity report and the
 * Gram-route SVD. Memory: {@code 2 S^2} doubles (3.5 MiB at S = 480, 140 MiB at S = 3000).
 */
public record Grams(String module, int m, int n, int[] ranks, int[] offsets, double[] weights, double[] scales,
        double[] rawWeights, double[] gramB, double[] gramA) {

    /** Stack rank S = sum of the clients' ranks. */
    public int stackRank() {
        return offsets[ranks.length];
    }

    public int clients() {
        return ranks.length;
    }

    /** {@code ||B_k A_k||_F} of client k from its diagonal blocks: NORM's weight (unscaled). */
    public double updateNorm(int k) {
        int s = stackRank(), o = offsets[k], r = ranks[k];
        double sum = 0;
        for (int i = 0; i < r; i++) {
            for (int j = 0; j < r; j++) {
                int at = (o + i) * s + o + j;
                sum += gramB[at] * gramA[at];
            }
        }
        return Math.sqrt(Math.max(sum, 0));
    }

    /** The exact weighted average's stack coefficients: {@code w_k s_k} per component of client k. */
    double[] exactTarget() {
        double[] t = new double[stackRank()];
        for (int k = 0; k < ranks.length; k++) {
            for (int i = 0; i < ranks[k]; i++) {
                t[offsets[k] + i] = weights[k] * scales[k];
            }
        }
        return t;
    }

    /**
     * The rank-aware average's coefficients (DESIGN §9): component i of client k counts with
     * {@code p_k s_k / P_i}, {@code P_i} the weight of the clients owning component i (0 when it is 0).
     */
    double[] rankAwareTarget() {
        int maxRank = 0;
        for (int r : ranks) {
            maxRank = Math.max(maxRank, r);
        }
        double[] ownerWeight = new double[maxRank];
        for (int k = 0; k < ranks.length; k++) {
            for (int i = 0; i < ranks[k]; i++) {
                ownerWeight[i] += rawWeights[k];
            }
        }
        double[] t = new double[stackRank()];
        for (int k = 0; k < ranks.length; k++) {
            for (int i = 0; i < ranks[k]; i++) {
                t[offsets[k] + i] = ownerWeight[i] == 0 ? 0 : rawWeights[k] * scales[k] / ownerWeight[i];
            }
        }
        return t;
    }
}
