package io.fedlora.product;

/**
 * How far one module's global adapter is from the updates it stands for (DESIGN §9), as squared
 * Frobenius norms so that modules add up: {@code error(target) = ||target - s B A||_F / ||target||_F}
 * for the exact weighted average {@code dW*} and for the rank-aware average {@code dW_ra}, for the
 * whole global adapter and for its truncation to each client rank in {@code ranks}.
 */
public record ModuleFidelity(String module, double exactNormSquared, double exactErrorSquared,
        double rankAwareNormSquared, double rankAwareErrorSquared, int[] ranks, double[] exactErrorSquaredAt,
        double[] rankAwareErrorSquaredAt) {

    /** {@code ||dW* - s B A||_F / ||dW*||_F}. */
    public double exact() {
        return relative(exactErrorSquared, exactNormSquared);
    }

    /** {@code ||dW_ra - s B A||_F / ||dW_ra||_F}. */
    public double rankAware() {
        return relative(rankAwareErrorSquared, rankAwareNormSquared);
    }

    /** {@link #exact()} of the truncation to {@code ranks[i]}. */
    public double exactAt(int i) {
        return relative(exactErrorSquaredAt[i], exactNormSquared);
    }

    public double rankAwareAt(int i) {
        return relative(rankAwareErrorSquaredAt[i], rankAwareNormSquared);
    }

    /**
     * {@code sqrt(max(num, 0) / den)}; the clamp because round-off can make an exact zero slightly
     * negative. With {@code den = 0} (the target is zero): 0 if the approximation is zero too, else infinity.
     */
    public static double relative(double errorSquared, double normSquared) {
        if (normSquared == 0) {
            return errorSquared <= 0 ? 0 : Double.POSITIVE_INFINITY;
        }
        return Math.sqrt(Math.max(errorSquared, 0) / normSquared);
    }
}
