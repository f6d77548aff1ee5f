package io.fedlora;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The modules and plain tensors that a batch or a round has taken, with their shapes. The first
 * client fixes each shape, and, unless missing modules are allowed, the set of modules and
 * tensors every later client must have: a client that lacks one or brings another is refused
 * when it is added, never discovered at {@code finish}.
 */
final class Shapes {
    final boolean allowMissing;
    /** Module to {@code {inFeatures, outFeatures}}, in the order first seen. */
    final Map<String, int[]> modules = new LinkedHashMap<>();
    final Map<String, long[]> others = new LinkedHashMap<>();
    /** Who fixed the set of modules (the first client, or "a merged round"), for messages. */
    private String reference;

    Shapes(boolean allowMissing) {
        this.allowMissing = allowMissing;
    }

    boolean isEmpty() {
        return reference == null;
    }

    /** Refuses {@code p} if it does not fit, changing nothing. */
    void check(ParsedUpdate p) {
        for (ParsedUpdate.Module m : p.modules.values()) {
            int[] known = modules.get(m.name());
            if (known != null && (known[0] != m.inFeatures() || known[1] != m.outFeatures())) {
                throw p.invalid(m.name(), "lora_A has " + m.inFeatures() + " input features and lora_B "
                        + m.outFeatures() + " output features, but earlier clients have " + known[0] + " and " + known[1]);
            }
        }
        for (ParsedUpdate.Other o : p.others.values()) {
            long[] known = others.get(o.key());
            if (known != null && !Arrays.equals(known, o.shape())) {
                throw p.invalid(o.key(), "shape " + Arrays.toString(o.shape()) + " differs from earlier clients' "
                        + Arrays.toString(known));
            }
        }
        if (allowMissing || isEmpty()) {
            return;
        }
        for (String module : modules.keySet()) {
            if (!p.modules.containsKey(module)) {
                throw p.invalid(module, "has no '" + module + "', which " + reference + " has" + ALLOW_HINT);
            }
        }
        for (String module : p.modules.keySet()) {
            if (!modules.containsKey(module)) {
                throw p.invalid(module, "has '" + module + "', which " + reference + " has not" + ALLOW_HINT);
            }
        }
        for (String key : others.keySet()) {
            if (!p.others.containsKey(key)) {
                throw p.invalid(key, "has no '" + key + "', which " + reference + " has" + ALLOW_HINT);
            }
        }
        for (String key : p.others.keySet()) {
            if (!others.containsKey(key)) {
                throw p.invalid(key, "has '" + key + "', which " + reference + " has not" + ALLOW_HINT);
            }
        }
    }

    private static final String ALLOW_HINT = " (allow missing modules to average each module over the clients that have it)";

    /** {@link #check}, then records the client's modules and tensors. */
    void admit(ParsedUpdate p) {
        check(p);
        record(p);
    }

    void record(ParsedUpdate p) {
        for (ParsedUpdate.Module m : p.modules.values()) {
            modules.putIfAbsent(m.name(), new int[] {m.inFeatures(), m.outFeatures()});
        }
        for (ParsedUpdate.Other o : p.others.values()) {
            others.putIfAbsent(o.key(), o.shape());
        }
        if (reference == null) {
            reference = "client '" + p.client.clientId() + "'";
        }
    }

    /**
     * Refuses sums from a merged round or partial that do not fit, changing nothing: shapes must
     * agree, and without missing modules both must hold the same modules and tensors (when both
     * hold any).
     */
    void checkMerge(Map<String, int[]> theirModules, Map<String, long[]> theirOthers, String what) {
        theirModules.forEach((module, shape) -> {
            int[] known = modules.get(module);
            if (known != null && !Arrays.equals(known, shape)) {
                throw new IllegalArgumentException("module '" + module + "' has " + shape[0] + " input and " + shape[1]
                        + " output features in " + what + " but " + known[0] + " and " + known[1] + " here");
            }
        });
        theirOthers.forEach((key, shape) -> {
            long[] known = others.get(key);
            if (known != null && !Arrays.equals(known, shape)) {
                throw new IllegalArgumentException("tensor '" + key + "' has shape " + Arrays.toString(shape) + " in "
                        + what + " but " + Arrays.toString(known) + " here");
            }
        });
        if (allowMissing || isEmpty() || theirModules.isEmpty() && theirOthers.isEmpty()) {
            return;
        }
        if (!modules.keySet().equals(theirModules.keySet()) || !others.keySet().equals(theirOthers.keySet())) {
            throw new IllegalArgumentException(what + " holds other modules or tensors than this round ("
                    + theirModules.keySet() + " against " + modules.keySet() + ")" + ALLOW_HINT);
        }
    }

    void recordMerge(Map<String, int[]> theirModules, Map<String, long[]> theirOthers, String what) {
        theirModules.forEach((module, shape) -> modules.putIfAbsent(module, shape.clone()));
        theirOthers.forEach((key, shape) -> others.putIfAbsent(key, shape.clone()));
        if (reference == null && !(theirModules.isEmpty() && theirOthers.isEmpty())) {
            reference = what;
        }
    }
}
