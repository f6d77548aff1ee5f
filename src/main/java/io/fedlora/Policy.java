package io.fedlora;

import java.io.Serializable;
import java.util.Objects;

/**
 * Everything that decides what a round computes (DESIGN §2), as a value: two aggregators with
 * equal policies compute the same result from the same clients, and rounds or partials merge
 * exactly when their policies are equal. Serialisable, so a distributed engine can ship it to
 * every worker.
 *
 * @param strategy how factors of different ranks are averaged
 * @param globalRank the global rank R for every module, or 0 for each module's largest client rank
 * @param allowMissing average a module over the clients that have it, instead of refusing a client
 *     whose modules differ from the round's
 * @param foldScale null to average the factors as they are (the paper's rule); else each client's
 *     LoRA scale is folded into its B before averaging and the result's B is divided by this
 *     scale at the global rank, so that {@code scale * B A} keeps its meaning
 */
public record Policy(Strategy strategy, int globalRank, boolean allowMissing, LoraScale foldScale)
        implements Serializable {

    public Policy {
        Objects.requireNonNull(strategy, "strategy");
        if (globalRank < 0) {
            throw new IllegalArgumentException("global rank must be >= 0, got " + globalRank);
        }
    }

    /** {@code strategy}, each module at its largest client rank, no missing modules, no folding. */
    public static Policy of(Strategy strategy) {
        return new Policy(strategy, 0, false, null);
    }

    public Policy withGlobalRank(int rank) {
        return new Policy(strategy, rank, allowMissing, foldScale);
    }

    public Policy withAllowMissing(boolean allow) {
        return new Policy(strategy, globalRank, allow, foldScale);
    }

    public Policy withFoldScale(LoraScale scale) {
        return new Policy(strategy, globalRank, allowMissing, scale);
    }

    /** True when clients' B factors carry their LoRA scale into the average. */
    public boolean folds() {
        return foldScale != null;
    }
}
