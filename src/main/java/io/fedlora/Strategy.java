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
    NORM;

    /** Parses "zero", "replication" or "norm" (any case). */
    public static Strategy parse(String name) {
        try {
            return valueOf(name.trim().toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException | NullPointerException e) {
            throw new IllegalArgumentException("unknown strategy '" + name + "'; expected zero, replication or norm");
        }
    }

    /** Lower-case name, as the command line spells it. */
    public String cliName() {
        return name().toLowerCase(Locale.ROOT);
    }
}
