package io.fedlora;

import java.util.Arrays;

/**
 * The bookkeeping behind the sums of one module (or of one tensor that is not a LoRA factor),
 * shared by batch aggregation and streaming rounds so that both do the same arithmetic (DESIGN §2):
 * the components held, each component's owner weight {@code P_i}, the total weight {@code P},
 * the client count, and the power of two the weights are measured in.
 *
 * <p>Weights stay double until they are normalised: a client's weight reaches the float32
 * kernels as {@code p_k * 2^-exponent}, where the exponent is that of the largest weight (batch)
 * or of the first non-zero weight (a round), so weights from 1e-300 to 1e300 work. Scaling by a
 * power of two is exact in float32, so the choice changes no result bit; the owner weights and
 * total are summed in double from the very float32 weights the sums were built with, so the
 * average is exactly normalised.
 */
final class Book {
    final String name;
    final Policy policy;
    /** Components held: the fixed global rank, or the largest client rank so far; 0 for a plain tensor. */
    int rank;
    double[] ownerWeight;
    double totalWeight;
    long clients;
    /** The sums hold weights in units of 2^exponent. */
    int exponent;
    /** Set by a batch, which knows every weight and measures them in the largest one's unit. */
    boolean exponentFixed;

    /** One client's share of the sums: components kept and the float32 weights of its A and B. */
    record Contribution(int kept, float weightA, float weightB) {
    }

    Book(String name, Policy policy, int rank) {
        this.name = name;
        this.policy = policy;
        this.rank = rank;
        this.ownerWeight = new double[rank];
    }

    Book copy() {
        Book b = new Book(name, policy, rank);
        b.ownerWeight = ownerWeight.clone();
        b.totalWeight = totalWeight;
        b.clients = clients;
        b.exponent = exponent;
        b.exponentFixed = exponentFixed;
        return b;
    }

    /** Takes back every change since {@code saved} was {@linkplain #copy copied}. */
    void restore(Book saved) {
        rank = saved.rank;
        ownerWeight = saved.ownerWeight;
        totalWeight = saved.totalWeight;
        clients = saved.clients;
        exponent = saved.exponent;
    }

    /** The rank the sums need to take a client of rank {@code clientRank}. */
    int rankFor(int clientRank) {
        return policy.globalRank() > 0 ? policy.globalRank() : Math.max(rank, clientRank);
    }

    void grow(int newRank) {
        if (newRank > rank) {
            ownerWeight = Arrays.copyOf(ownerWeight, newRank);
            rank = newRank;
        }
    }

    /** Measures every weight in the unit of the largest, {@code maxWeight} (a batch knows them all). */
    void fixExponent(double maxWeight) {
        exponent = exponentOf(maxWeight);
        exponentFixed = true;
    }

    /** The exponent of a weight (0 for 0): the unit the sums use when this weight sets it. */
    static int exponentOf(double weight) {
        return weight > 0 ? Math.max(Math.getExponent(weight), Double.MIN_EXPONENT) : 0;
    }

    /**
     * Computes a client's contribution, without recording it: its weight {@code p} (or NORM's
     * norm) and, when scales are folded, its LoRA scale for B. Refuses a weight that float32
     * cannot hold next to the ones the sums already carry.
     */
    Contribution contribution(ParsedUpdate client, int clientRank, double p, double clientScale) {
        int e = exponentFixed || totalWeight != 0 ? exponent : exponentOf(p);
        double units = Math.scalb(p, -e);
        float wa = (float) units, wb = (float) (units * clientScale);
        if (Float.isInfinite(wa) || Float.isInfinite(wb)) {
            throw client.invalid(name, "weight " + p + " is more than 2^128 times the weights already summed"
                    + " (float32 sums cannot hold both); rescale the weights");
        }
        return new Contribution(Math.min(clientRank, rankFor(clientRank)), wa, wb);
    }

    /** Records a contribution computed by {@link #contribution} (after the sums took it). */
    void record(double p, Contribution c) {
        if (!exponentFixed && totalWeight == 0) {
            exponent = exponentOf(p);
        }
        for (int i = 0; i < c.kept(); i++) {
            ownerWeight[i] += c.weightA();
        }
        totalWeight += c.weightA();
        clients++;
    }

    /** The factor that brings sums in {@code other}'s units into this book's: 2^(other - this). */
    float mergeFactor(int otherExponent, double otherTotal) {
        if (totalWeight == 0 || otherTotal == 0) {
            return 1f;
        }
        float f = Math.scalb(1f, otherExponent - exponent);
        if (Float.isInfinite(f)) {
            throw new IllegalArgumentException("'" + name + "': the merged sums' weights are more than 2^128 times"
                    + " these (float32 sums cannot hold both)");
        }
        return f;
    }

    /** Adds another book's bookkeeping, its weights scaled by {@code factor} (exact: a power of two). */
    void merge(Book other, float factor) {
        merge(other.ownerWeight, other.totalWeight, other.clients, other.exponent, factor);
    }

    void merge(double[] otherOwner, double otherTotal, long otherClients, int otherExponent, float factor) {
        if (totalWeight == 0 && otherTotal != 0) {
            // The sums so far are zero (every weight was 0): take the other unit as it is.
            exponent = otherExponent;
        }
        for (int i = 0; i < otherOwner.length; i++) {
            ownerWeight[i] += otherOwner[i] * factor;
        }
        totalWeight += otherTotal * factor;
        clients += otherClients;
    }

    /**
     * Per component, what A's sums are multiplied by: {@code 1 / P} (ZERO, NORM) or
     * {@code 1 / P_i}, 0 where no client owns i (REPLICATION). Divisions in double, rounded once.
     */
    float[] scaleA() {
        checkTotal();
        float[] scale = new float[rank];
        if (policy.strategy() == Strategy.REPLICATION) {
            for (int i = 0; i < rank; i++) {
                scale[i] = ownerWeight[i] > 0 ? (float) (1.0 / ownerWeight[i]) : 0f;
            }
        } else {
            Arrays.fill(scale, (float) (1.0 / totalWeight));
        }
        return scale;
    }

    /** B's column scale: A's, divided by the global LoRA scale when scales are folded. */
    float[] scaleB(float[] scaleA) {
        if (!policy.folds()) {
            return scaleA;
        }
        double global = policy.foldScale().of(name, rank);
        float[] scale = new float[rank];
        for (int i = 0; i < rank; i++) {
            scale[i] = (float) (scaleA[i] / global);
        }
        return scale;
    }

    /** {@code 1 / P} for a tensor that is not a LoRA factor. */
    float inverseTotal() {
        checkTotal();
        return (float) (1.0 / totalWeight);
    }

    private void checkTotal() {
        if (!(totalWeight > 0)) {
            throw new IllegalStateException("'" + name + "': the clients' total weight is " + totalWeight
                    + (policy.strategy() == Strategy.NORM ? " (every update has zero norm, so NORM weights are undefined)" : ""));
        }
    }

    /** The scale a client's B is multiplied by before averaging: its LoRA scale when folding, else 1. */
    static double clientScale(Policy policy, ParsedUpdate client, String module, int rank) {
        if (!policy.folds()) {
            return 1;
        }
        LoraScale scale = client.client.scale();
        if (scale == null) {
            throw client.invalid(module, "scales are folded but the client has no LoRA scale");
        }
        return scale.of(module, rank);
    }
}
