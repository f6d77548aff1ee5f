package io.fedlora;

import io.fedlora.product.Split;
import java.io.Serializable;
import java.util.Objects;

/**
 * Everything that decides what a round computes (DESIGN §2), as a value: two aggregators with
 * equal policies compute the same result from the same clients, and rounds or partials merge
 * exactly when their policies are equal. Serialisable, so a distributed engine can ship it to
 * every worker.
 *
 * <p>The split only changes what {@link Strategy#SVD} writes, so for every other strategy it is
 * normalised to {@link Split#FLEXLORA}: {@code Policy.of(ZERO).withSplit(BALANCED).split()} is
 * FLEXLORA and equals {@code Policy.of(ZERO)}, so rounds and partials that differ only in a split
 * that cannot change their arithmetic still merge.
 *
 * @param strategy how factors of different ranks are averaged
 * @param globalRank the global rank R for every module, or 0 for each module's largest client rank
 * @param allowMissing average a module over the clients that have it, instead of refusing a client
 *     whose modules differ from the round's
 * @param foldScale null to average the factors as they are (the paper's rule); else each client's
 *     LoRA scale is folded into its B before averaging and the result's B is divided by this
 *     scale at the global rank, so that {@code scale * B A} keeps its meaning
 * @param split how SVD splits {@code U Sigma V^T} into LoRA factors (DESIGN §9): FLEXLORA
 *     ({@code B = U Sigma / s_out}, {@code A = V^T}, the default) or BALANCED
 *     ({@code B = U (Sigma / s_out)^1/2}, {@code A = (Sigma / s_out)^1/2 V^T}); both give the same
 *     {@code s_out B A}. Not null; always FLEXLORA unless the strategy is SVD
 */
public record Policy(Strategy strategy, int globalRank, boolean allowMissing, LoraScale foldScale, Split split)
        implements Serializable {

    public Policy {
        Objects.requireNonNull(strategy, "strategy");
        Objects.requireNonNull(split, "split");
        if (globalRank < 0) {
            throw new IllegalArgumentException("global rank must be >= 0, got " + globalRank);
        }
        if (strategy != Strategy.SVD) {
            split = Split.FLEXLORA;
        }
    }

    /** The policy with the default split, FLEXLORA. */
    public Policy(Strategy strategy, int globalRank, boolean allowMissing, LoraScale foldScale) {
        this(strategy, globalRank, allowMissing, foldScale, Split.FLEXLORA);
    }

    /** {@code strategy}, each module at its largest client rank, no missing modules, no folding, FLEXLORA split. */
    public static Policy of(Strategy strategy) {
        return new Policy(strategy, 0, false, null);
    }

    public Policy withGlobalRank(int rank) {
        return new Policy(strategy, rank, allowMissing, foldScale, split);
    }

    public Policy withAllowMissing(boolean allow) {
        return new Policy(strategy, globalRank, allow, foldScale, split);
    }

    public Policy withFoldScale(LoraScale scale) {
        return new Policy(strategy, globalRank, allowMissing, scale, split);
    }

    /** This policy with SVD's output split; a no-op (FLEXLORA) for every other strategy. */
    public Policy withSplit(Split s) {
        return new Policy(strategy, globalRank, allowMissing, foldScale, s);
    }

    /** True when clients' B factors carry their LoRA scale into the average. */
    public boolean folds() {
        return foldScale != null;
    }
}
