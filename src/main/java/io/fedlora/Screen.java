package io.fedlora;

import io.fedlora.kernels.Kernels;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The value checks of a parsed client (DESIGN §6), a facade step between parsing and the sums:
 * every value finite and, for NORM, each module's weight {@code s_k = ||B_k A_k||_F} from the
 * whole update (before any cut to the global rank). Reading the values here is also what finds
 * a mapped file that was truncated or an arena that was closed, before any sum is touched.
 */
final class Screen {

    private Screen() {
    }

    /**
     * Per module, the weight its factors are accumulated with: the client weight, or for NORM the
     * norm of its update.
     *
     * @param scanFinite scan every value for NaN and infinity; batch aggregation skips the scan
     *     because its fused kernel finds them in the same pass that sums them
     */
    static Map<String, Double> moduleWeights(ParsedUpdate p, Strategy strategy, Kernels kernels, boolean scanFinite) {
        Map<String, Double> weights = new LinkedHashMap<>();
        try {
            for (ParsedUpdate.Module m : p.modules.values()) {
                if (scanFinite && !kernels.allFinite(m.a())) {
                    throw p.invalid(m.name(), "lora_A holds NaN or infinity");
                }
                if (scanFinite && !kernels.allFinite(m.b())) {
                    throw p.invalid(m.name(), "lora_B holds NaN or infinity");
                }
                double w = p.client.weight();
                if (strategy == Strategy.NORM) {
                    w = Math.sqrt(kernels.loraNormSquared(m.a(), m.b()));
                    if (!Double.isFinite(w)) {
                        // Also where the scan was skipped: NaN or infinity in A or B makes the norm non-finite.
                        throw p.invalid(m.name(), "||B A||_F is not finite (NaN or infinity in lora_A or lora_B, or overflow)");
                    }
                }
                weights.put(m.name(), w);
            }
            if (scanFinite) {
                for (ParsedUpdate.Other o : p.others.values()) {
                    if (!kernels.allFinite(o.values())) {
                        throw p.invalid(o.key(), "holds NaN or infinity");
                    }
                }
            }
        } catch (InvalidUpdateException e) {
            throw e;
        } catch (RuntimeException | InternalError e) {
            throw unreadable(p.client, e);
        }
        return weights;
    }

    /**
     * True for the failures of reading a client's memory: an I/O fault on a mapped file
     * ({@link InternalError} from the JVM's unsafe access), a closed arena, a wrong thread.
     */
    static boolean isReadFault(Throwable t) {
        return t instanceof InternalError || t instanceof IllegalStateException || t instanceof WrongThreadException;
    }

    /** The client's data could not be read: the error names the client and its file. */
    static RuntimeException unreadable(ClientUpdate client, Throwable t) {
        if (!isReadFault(t)) {
            return t instanceof RuntimeException r ? r : new IllegalStateException(t);
        }
        String why = t instanceof InternalError
                ? "an I/O error while reading its data (was the file truncated or removed meanwhile?)"
                : "its data could not be read (" + t.getMessage() + ")";
        return new InvalidUpdateException(client.clientId(), client.source(), null, why, t);
    }
}
