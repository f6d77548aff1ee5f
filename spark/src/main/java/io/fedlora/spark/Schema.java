package io.fedlora.spark;

import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.Tensor;
import java.io.Serializable;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The tensors of the first readable client (the base client), against which every client is
 * checked before it is added: same keys (unless missing modules are allowed), same features for
 * each LoRA factor (any rank), same shape for every other tensor. A single round refuses a client
 * that disagrees with the clients before it; across Spark tasks "before" has no meaning, and
 * without one reference the client that is refused would depend on how the manifest was split,
 * or two partials would disagree and the merge would fail the job.
 *
 * @param clientId the base client
 * @param shapes   key -> shape, in the base client's file order (which the output keeps)
 */
record Schema(String clientId, Map<String, long[]> shapes) implements Serializable {

    static Schema of(String clientId, Map<String, Tensor> tensors) {
        Map<String, long[]> shapes = new LinkedHashMap<>();
        tensors.forEach((key, t) -> shapes.put(key, t.shape()));
        return new Schema(clientId, shapes);
    }

    /** Keys in the base client's order. */
    List<String> keys() {
        return List.copyOf(shapes.keySet());
    }

    /** Why {@code tensors} cannot join a round with the base client, or null when they can. */
    String problem(Map<String, Tensor> tensors, boolean allowMissing) {
        for (var e : tensors.entrySet()) {
            String key = e.getKey();
            long[] expected = shapes.get(key);
            long[] shape = e.getValue().shape();
            if (expected == null) {
                if (!allowMissing) {
                    return "has '" + key + "', which the first client (" + clientId + ") lacks"
                            + " (allow missing modules to average it over the clients that have it)";
                }
                continue;
            }
            int factor = factorOf(key);
            boolean agrees = factor == 0 ? Arrays.equals(shape, expected)
                    : shape.length == 2 && expected.length == 2 && shape[factor == 'A' ? 1 : 0] == expected[factor == 'A' ? 1 : 0];
            if (!agrees) {
                return "'" + key + "' has shape " + Arrays.toString(shape) + " but the first client (" + clientId + ") has "
                        + Arrays.toString(expected) + (factor == 0 ? "" : " (ranks may differ, features may not)");
            }
        }
        if (!allowMissing) {
            for (String key : shapes.keySet()) {
                if (!tensors.containsKey(key)) {
                    return "lacks '" + key + "', which the first client (" + clientId + ") has"
                            + " (allow missing modules to average it over the clients that have it)";
                }
            }
        }
        return null;
    }

    /** 'A' or 'B' for a LoRA factor key, 0 for any other tensor. */
    private static int factorOf(String key) {
        String prefix = PeftAdapter.modulePrefix(key);
        if (prefix == null) {
            return 0;
        }
        return key.substring(prefix.length()).contains("_A") ? 'A' : 'B';
    }
}
