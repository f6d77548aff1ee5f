package io.fedlora;

import io.fedlora.tensor.Tensor;

import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A client update split into LoRA modules and other tensors, with every check that needs only the
 * client itself done (DESIGN §6): weight, pairing, shapes, ranks, NaN and infinity, and for NORM
 * the update's norm. Checks against other clients happen where the round's state is.
 */
final class ParsedUpdate {

    /** PEFT suffixes of the two factors: linear layers, then embeddings (saved without ".weight"). */
    static final String[][] FACTOR_SUFFIXES = {
        {".lora_A.weight", ".lora_B.weight"},
        {".lora_embedding_A", ".lora_embedding_B"},
    };

    /** One module of one client: A is {@code [rank, in]}, B is {@code [out, rank]}. */
    record Module(String name, String keyA, String keyB, Matrix a, Matrix b, int rank) {
        int inFeatures() {
            return a.cols();
        }

        int outFeatures() {
            return b.rows();
        }
    }

    /** A tensor that is not a LoRA factor, seen as {@code [rows, cols]} with cols its last dimension. */
    record Other(String key, long[] shape, Matrix values) {
    }

    final ClientUpdate client;
    final Map<String, Module> modules = new LinkedHashMap<>();
    final Map<String, Other> others = new LinkedHashMap<>();
    /** Per module, the weight this client's factors are accumulated with: p_k, or s_k for NORM. */
    final Map<String, Double> moduleWeight = new LinkedHashMap<>();

    private ParsedUpdate(ClientUpdate client) {
        this.client = client;
    }

    /**
     * @param checkFinite scan every value for NaN and infinity; batch aggregation skips the scan
     *     because its fused kernel finds them in the same pass that sums them
     */
    static ParsedUpdate parse(ClientUpdate client, Strategy strategy, Kernels kernels, boolean checkFinite) {
        ParsedUpdate parsed = new ParsedUpdate(client);
        String id = client.clientId();
        double weight = client.weight();
        if (!Double.isFinite(weight) || weight < 0) {
            throw new InvalidUpdateException(id, null, "weight " + weight + " is " + (weight < 0 ? "negative" : "not finite"));
        }
        Map<String, Tensor> tensors = client.tensors();
        for (Map.Entry<String, Tensor> entry : tensors.entrySet()) {
            String key = entry.getKey();
            String[] pair = factorPair(key);
            if (pair == null) {
                parsed.others.put(key, other(id, key, entry.getValue()));
                continue;
            }
            String module = key.substring(0, key.length() - pair[0].length());
            boolean isA = key.endsWith(pair[0]) && !key.endsWith(pair[1]);
            if (!isA) {
                // B factors are handled with their A; a B without an A is reported here.
                String keyA = module + pair[0];
                if (!tensors.containsKey(keyA)) {
                    throw new InvalidUpdateException(id, module, "has " + key + " but no " + keyA);
                }
                continue;
            }
            String keyB = module + pair[1];
            Tensor a = entry.getValue();
            Tensor b = tensors.get(keyB);
            if (b == null) {
                throw new InvalidUpdateException(id, module, "has " + key + " but no " + keyB);
            }
            parsed.modules.put(module, module(id, module, key, a, keyB, b));
        }
        if (parsed.modules.isEmpty()) {
            throw new InvalidUpdateException(id, null, "holds no LoRA factors (no keys ending in .lora_A.weight / .lora_B.weight)");
        }
        for (Module m : parsed.modules.values()) {
            if (checkFinite && !kernels.allFinite(m.a)) {
                throw new InvalidUpdateException(id, m.name, "lora_A holds NaN or infinity");
            }
            if (checkFinite && !kernels.allFinite(m.b)) {
                throw new InvalidUpdateException(id, m.name, "lora_B holds NaN or infinity");
            }
            double w = weight;
            if (strategy == Strategy.NORM) {
                w = Math.sqrt(kernels.loraNormSquared(m.a, m.b));
                if (!Double.isFinite(w)) {
                    // Also where the scan was skipped: a NaN or infinity in A or B makes the norm non-finite.
                    throw new InvalidUpdateException(id, m.name, "||B A||_F is not finite (NaN or infinity in lora_A or lora_B, or overflow)");
                }
            }
            parsed.moduleWeight.put(m.name, w);
        }
        for (Other o : parsed.others.values()) {
            if (checkFinite && !kernels.allFinite(o.values)) {
                throw new InvalidUpdateException(id, o.key, "holds NaN or infinity");
            }
        }
        return parsed;
    }

    /** The (A suffix, B suffix) pair whose A or B suffix ends {@code key}, or null. */
    static String[] factorPair(String key) {
        for (String[] pair : FACTOR_SUFFIXES) {
            if (key.endsWith(pair[0]) || key.endsWith(pair[1])) {
                return pair;
            }
        }
        return null;
    }

    private static Module module(String id, String module, String keyA, Tensor a, String keyB, Tensor b) {
        if (a.rank() != 2 || b.rank() != 2) {
            throw new InvalidUpdateException(id, module, "factors must be 2-D, got lora_A " + a + " and lora_B " + b);
        }
        long rank = a.dim(0);
        if (b.dim(1) != rank) {
            throw new InvalidUpdateException(id, module, "lora_A " + Arrays.toString(a.shape()) + " has rank " + rank
                    + " but lora_B " + Arrays.toString(b.shape()) + " has rank " + b.dim(1));
        }
        if (rank < 1) {
            throw new InvalidUpdateException(id, module, "rank 0 (lora_A " + Arrays.toString(a.shape()) + ")");
        }
        if (a.dim(1) < 1 || b.dim(0) < 1) {
            throw new InvalidUpdateException(id, module, "empty factor: lora_A " + Arrays.toString(a.shape())
                    + ", lora_B " + Arrays.toString(b.shape()));
        }
        if (a.elementCount() > Integer.MAX_VALUE - 8 || b.elementCount() > Integer.MAX_VALUE - 8) {
            throw new InvalidUpdateException(id, module, "factor of more than 2^31 elements is not supported");
        }
        int r = (int) rank;
        return new Module(module, keyA, keyB,
                Matrix.dense(a.data(), a.dtype(), r, (int) a.dim(1)),
                Matrix.dense(b.data(), b.dtype(), (int) b.dim(0), r), r);
    }

    private static Other other(String id, String key, Tensor t) {
        if (t.elementCount() > Integer.MAX_VALUE - 8) {
            throw new InvalidUpdateException(id, key, "tensor of more than 2^31 elements is not supported");
        }
        return new Other(key, t.shape(), rowsOf(t));
    }

    /** A tensor that is not a LoRA factor as a dense {@code [rows, cols]} view, cols its last dimension. */
    static Matrix rowsOf(Tensor t) {
        long[] shape = t.shape();
        int cols = shape.length == 0 ? 1 : (int) shape[shape.length - 1];
        int rows = cols == 0 ? 0 : (int) (t.elementCount() / cols);
        return Matrix.dense(t.data(), t.dtype(), rows, cols);
    }
}
