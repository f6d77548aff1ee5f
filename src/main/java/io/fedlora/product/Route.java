package io.fedlora.product;

/** Which algorithm of DESIGN §9 computed a factorisation. */
public enum Route {
    /** Gram matrices of the stacks, two symmetric eigenproblems and an S x S SVD; no stacked copy. */
    GRAM,
    /** Householder QR of the weighted stacks and an SVD of {@code R_U R_V^T}: used when {@code S > min(m, n)}. */
    QR
}
