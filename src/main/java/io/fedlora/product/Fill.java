package io.fedlora.product;

/**
 * What the components of a factorisation beyond its numerical rank get (the update has fewer
 * than R independent directions: zero, duplicate or too few clients). Their B columns are zero
 * either way, so the product is the same.
 */
public enum Fill {
    /**
     * Deterministic orthonormal A rows, orthogonal to the kept ones: a component with
     * {@code A = B = 0} gets zero gradients for both factors and never learns, so this is the default.
     */
    ORTH,
    /** A rows of zeros too. */
    ZERO
}
