package io.fedlora;

/**
 * The factor PEFT multiplies {@code B A} by for one module of one adapter: {@code lora_alpha / r},
 * or {@code lora_alpha / sqrt(r)} with rsLoRA. Used only when scales are folded into B
 * (see {@link Aggregator.Builder#foldScale}).
 */
@FunctionalInterface
public interface LoraScale {

    /** The scale of {@code module} at rank {@code rank}. */
    double of(String module, int rank);

    /** PEFT's default: {@code alpha / r}. */
    static LoraScale alphaOverRank(double alpha) {
        return (module, rank) -> alpha / rank;
    }

    /** rsLoRA: {@code alpha / sqrt(r)}. */
    static LoraScale rsLora(double alpha) {
        return (module, rank) -> alpha / Math.sqrt(rank);
    }
}
