package io.fedlora.product;

import java.util.Arrays;

/**
 * A global adapter written as a combination of the clients' factors (DESIGN §9, the coefficient
 * split): with the stacks {@code Bs = [B_1 ... B_K]} ({@code m x S}) and {@code As = [A_1; ...; A_K]}
 * ({@code S x n}), the update the global adapter applies is {@code s_out B A = Bs L R^T As}, with
 * {@code L} and {@code R} of {@code S x rank}, column {@code i} belonging to global component {@code i}.
 * Every strategy's output has this form with coefficients known from the weights alone, so its
 * distance from any other such combination (the exact average) can be measured from the Gram
 * matrices of the stacks, without forming {@code m x n}. Columns are stored sparse: a ZERO,
 * REPLICATION or NORM column has one entry per owner of that component, a STACK column one entry.
 */
public final class Coefficients {

    private final int stackRank;
    private final int[][] leftIndex;
    private final double[][] leftValue;
    private final int[][] rightIndex;
    private final double[][] rightValue;

    Coefficients(int stackRank, int[][] leftIndex, double[][] leftValue, int[][] rightIndex, double[][] rightValue) {
        this.stackRank = stackRank;
        this.leftIndex = leftIndex;
        this.leftValue = leftValue;
        this.rightIndex = rightIndex;
        this.rightValue = rightValue;
    }

    /** Stack rank S, the number of rows of L and R. */
    public int stackRank() {
        return stackRank;
    }

    /** The number of global components (columns of L and R). */
    public int rank() {
        return leftIndex.length;
    }

    /** The first {@code r} components: what a client of rank r receives (DESIGN §2, truncation for download). */
    public Coefficients truncate(int r) {
        int kept = Math.min(r, rank());
        return new Coefficients(stackRank, Arrays.copyOf(leftIndex, kept), Arrays.copyOf(leftValue, kept),
                Arrays.copyOf(rightIndex, kept), Arrays.copyOf(rightValue, kept));
    }

    int[] leftIndex(int component) {
        return leftIndex[component];
    }

    double[] leftValue(int component) {
        return leftValue[component];
    }

    int[] rightIndex(int component) {
        return rightIndex[component];
    }

    double[] rightValue(int component) {
        return rightValue[component];
    }

    /**
     * The factor averages of DESIGN §2 (ZERO, REPLICATION, NORM): global component {@code i} is
     * {@code B[:, i] = sum_k v_k s_k B_k[:, i] / d_i / s_out} and {@code A[i] = sum_k v_k A_k[i] / d_i} over
     * the clients with {@code i < min(r_k, rank)}, where {@code d_i = sum_k v_k} over all clients (ZERO,
     * NORM) or over the owners of {@code i} (REPLICATION); a component with {@code d_i = 0} is zero.
     *
     * @param ranks the clients' ranks r_k, in stack order
     * @param v the averaging weights: p_k (ZERO, REPLICATION) or ||B_k A_k||_F (NORM)
     * @param scales the folded LoRA scales s_k (all 1 when not folding)
     */
    public static Coefficients factorAverage(int[] ranks, double[] v, double[] scales, int rank, boolean replication) {
        int k = ranks.length;
        int[] offset = offsets(ranks);
        double total = 0;
        for (double x : v) {
            total += x;
        }
        int[][] li = new int[rank][], ri = new int[rank][];
        double[][] lv = new double[rank][], rv = new double[rank][];
        for (int i = 0; i < rank; i++) {
            double divisor = 0;
            int owners = 0;
            for (int c = 0; c < k; c++) {
                if (i < ranks[c]) {
                    divisor += v[c];
                    owners++;
                }
            }
            if (!replication) {
                divisor = total;
            }
            if (divisor == 0) {
                owners = 0;
            }
            li[i] = new int[owners];
            ri[i] = new int[owners];
            lv[i] = new double[owners];
            rv[i] = new double[owners];
            int e = 0;
            for (int c = 0; c < k && owners > 0; c++) {
                if (i < ranks[c]) {
                    li[i][e] = ri[i][e] = offset[c] + i;
                    lv[i][e] = v[c] * scales[c] / divisor;
                    rv[i][e] = v[c] / divisor;
                    e++;
                }
            }
        }
        return new Coefficients(offset[k], li, lv, ri, rv);
    }

    /**
     * FLoRA stacking: {@code B = Bs}, {@code A = diag(w_col s_col / s_out) As}, so {@code L = I} and
     * {@code R = diag(w_col s_col)}, exact at rank S.
     */
    public static Coefficients stack(int[] ranks, double[] weights, double[] scales) {
        int[] offset = offsets(ranks);
        double total = 0;
        for (double w : weights) {
            total += w;
        }
        int s = offset[ranks.length];
        int[][] li = new int[s][], ri = new int[s][];
        double[][] lv = new double[s][], rv = new double[s][];
        for (int c = 0; c < ranks.length; c++) {
            for (int i = 0; i < ranks[c]; i++) {
                int p = offset[c] + i;
                li[p] = ri[p] = new int[] {p};
                lv[p] = new double[] {1.0};
                rv[p] = new double[] {weights[c] / total * scales[c]};
            }
        }
        return new Coefficients(s, li, lv, ri, rv);
    }

    /** Dense columns: {@code left} and {@code right} are {@code S x rank}, row-major. */
    static Coefficients dense(int s, int rank, double[] left, double[] right) {
        int[] all = new int[s];
        Arrays.setAll(all, p -> p);
        int[][] li = new int[rank][], ri = new int[rank][];
        double[][] lv = new double[rank][], rv = new double[rank][];
        for (int i = 0; i < rank; i++) {
            li[i] = ri[i] = all;
            lv[i] = new double[s];
            rv[i] = new double[s];
            for (int p = 0; p < s; p++) {
                lv[i][p] = left[p * rank + i];
                rv[i][p] = right[p * rank + i];
            }
        }
        return new Coefficients(s, li, lv, ri, rv);
    }

    /** Where each client's components start in the stack; the last entry is S. */
    static int[] offsets(int[] ranks) {
        int[] offset = new int[ranks.length + 1];
        for (int c = 0; c < ranks.length; c++) {
            offset[c + 1] = Math.addExact(offset[c], ranks[c]);
        }
        return offset;
    }
}
