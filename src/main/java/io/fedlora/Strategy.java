package io.fedlora;

import java.util.Locale;

/** How factors of different ranks are averaged (DESIGN §2). */
public enum Strategy {
    /** Conventional zero-padding: every component is divided by the total weight P. */
    ZERO,
    /**
     * Replication-based padding (Byun and Lee, arXiv 2406.17477): component i is divided by the
     * weight of the clients that own it, so what only high-rank clients learned keeps its size.
     */
    REPLICATION,
    /** HetLoRA-style: ZERO with each client weighted by the Frobenius norm of its update B A. */
    NORM,
    /**
     * Product space (DESIGN §9): the best rank-R approximation of the exact weighted average
     * {@code sum_k w_k B_k A_k} (with the clients' LoRA scales when folding), split as
     * {@link Policy#split()} says: FlexLoRA / PEFT-svd ({@code B = U Sigma / s_out}, {@code A = V^T},
     * the default) or balanced; components ordered by singular value, so
     * {@link Aggregator#truncate} gives every client its best rank-r_k part (FlexLoRA
     * redistribution). Never forms the m x n matrix. Batch or round: a {@link Round} keeps every
     * client's float32 factors, {@code (m + n) * sum_k r_k * 4} bytes per module
     * ({@link Round#factorBytes()}), and finishes with the batch's bits.
     */
    SVD,
    /**
     * FLoRA stacking: {@code B = [B_1 ... B_K]}, {@code A = [w_1 A_1; ...; w_K A_K]}, exact at rank
     * {@code sum_k r_k} (the global rank does not apply). Batch or round, with SVD's memory bound:
     * {@code (m + n) * sum_k r_k * 4} bytes per module, the size of the output itself.
     */
    STACK;

    /** True for the strategies of DESIGN §9, which work on the products B_k A_k, not factor by factor. */
    public boolean productSpace() {
        return this == SVD || this == STACK;
    }

    /** Parses "zero", "replication", "norm", "svd" or "stack" (any case). */
    public static Strategy parse(String name) {
        try {
            return valueOf(name.trim().toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException | NullPointerException e) {
            throw new IllegalArgumentException("unknown strategy '" + name + "'; expected zero, replication, norm, svd or stack");
        }
    }

    /** Lower-case name, as the command line spells it. */
    public String cliName() {
        return name().toLowerCase(Locale.ROOT);
    }
}
