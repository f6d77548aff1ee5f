package io.fedlora.product;

/** Which algorithm of DESIGN §9 computed a factorisation. */
public enum Route {
    /** Gram matrices of the stacks, their square roots (pivoted Cholesky) and an SVD of the core; no stacked copy. */
    GRAM,
    /** Householder QR of the weighted stacks and an SVD of {@code R_U R_V^T}: used when {@code S > min(m, n)}. */
    QR
}
