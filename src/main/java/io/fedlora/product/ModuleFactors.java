package io.fedlora.product;

import io.fedlora.tensor.Matrix;

/**
 * One client's LoRA factors of one module, as views (read in place, never copied whole):
 * {@code a} is {@code [r, n]}, {@code b} is {@code [m, r]} (PEFT layout). {@code weight} is the
 * client's weight {@code p_k >= 0}; {@code scale} its LoRA scale {@code s_k} when scales are
 * folded into the product ({@code alpha / r}), else 1. The update this client stands for is
 * {@code scale * B A}.
 */
public record ModuleFactors(String clientId, Matrix a, Matrix b, double weight, double scale) {

    /** A client with scale 1 (scales not folded). */
    public static ModuleFactors of(String clientId, Matrix a, Matrix b, double weight) {
        return new ModuleFactors(clientId, a, b, weight, 1.0);
    }

    public int rank() {
        return a.rows();
    }
}
