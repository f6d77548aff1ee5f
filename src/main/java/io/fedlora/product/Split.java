package io.fedlora.product;

/**
 * How a product-space factorisation {@code U Sigma V^T} is split into LoRA factors; both give the
 * same {@code s_out B A}, but continued training sees different factors (PRODUCT_SPACE.md §2.4).
 */
public enum Split {
    /** FlexLoRA and PEFT's {@code svd} merge: {@code B = U Sigma / s_out}, {@code A = V^T} (orthonormal rows). */
    FLEXLORA,
    /** PiSSA-like, minimising {@code ||B||^2 + ||A||^2}: {@code B = U (Sigma / s_out)^1/2}, {@code A = (Sigma / s_out)^1/2 V^T}. */
    BALANCED
}
