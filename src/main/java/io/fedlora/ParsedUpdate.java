package io.fedlora;

import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A client update taken apart into LoRA modules and other tensors, with every structural check
 * that needs only the client itself (DESIGN §6): weight, pairing, shapes, ranks, and whether its
 * memory can be read from the kernels' threads. Structure only: nothing here reads a value, so
 * parsing never faults on mapped data. Values are screened by {@link Screen}; checks against
 * other clients are where the round's state is.
 */
final class ParsedUpdate {

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

    /** A never-started thread: a segment it may access is not confined to its creator. */
    private static final Thread ANY_OTHER_THREAD = new Thread(() -> { });

    final ClientUpdate client;
    final Map<String, Module> modules = new LinkedHashMap<>();
    final Map<String, Other> others = new LinkedHashMap<>();
    /** True when some tensor lives in memory that can fail under a reader (a mapped file, an arena). */
    final boolean faultable;

    private ParsedUpdate(ClientUpdate client, boolean faultable) {
        this.client = client;
        this.faultable = faultable;
    }

    static ParsedUpdate parse(ClientUpdate client) {
        double weight = client.weight();
        if (!Double.isFinite(weight) || weight < 0) {
            throw invalid(client, null, "weight " + weight + " is " + (weight < 0 ? "negative" : "not finite"));
        }
        Map<String, Tensor> tensors = client.tensors();
        boolean faultable = false;
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            faultable |= checkMemory(client, e.getKey(), e.getValue().data());
        }
        ParsedUpdate parsed = new ParsedUpdate(client, faultable);
        for (Map.Entry<String, Tensor> entry : tensors.entrySet()) {
            String key = entry.getKey();
            PeftKeys.Key parsedKey = PeftKeys.parse(key);
            if (parsedKey == null) {
                parsed.others.put(key, other(client, key, entry.getValue()));
                continue;
            }
            String module = parsedKey.module();
            String partner = parsedKey.partner();
            if (!tensors.containsKey(partner)) {
                throw invalid(client, module, "has " + key + " but no " + partner);
            }
            if (parsedKey.factor() == Aggregator.Factor.B) {
                continue; // handled with its A
            }
            Module previous = parsed.modules.get(module);
            if (previous != null) {
                throw invalid(client, module, "holds two adapters for one module (" + previous.keyA() + " and " + key
                        + "); aggregate one adapter at a time");
            }
            parsed.modules.put(module, module(client, module, key, entry.getValue(), partner, tensors.get(partner)));
        }
        if (parsed.modules.isEmpty()) {
            throw invalid(client, null, "holds no LoRA factors (no keys ending in .lora_A.weight / .lora_B.weight,"
                    + " .lora_A.<adapter>.weight or .lora_embedding_A)");
        }
        return parsed;
    }

    /**
     * Refuses memory the kernels cannot read (a closed arena, or a confined one, which only its
     * owner thread may touch while the kernels split work across threads); true when the memory
     * can still fail under a reader (a mapped file that another process truncates, an arena
     * closed meanwhile), so that the round keeps an undo copy while it sums such a client.
     */
    private static boolean checkMemory(ClientUpdate client, String key, MemorySegment data) {
        if (!data.scope().isAlive()) {
            throw invalid(client, key, "its memory was already freed (the arena it lives in is closed)");
        }
        if (!data.isAccessibleBy(ANY_OTHER_THREAD)) {
            throw invalid(client, key, "lives in a confined arena, which only its owner thread may read; allocate it in a"
                    + " shared arena (Arena.ofShared()), the global arena or on the heap");
        }
        return data.isNative() && (data.isMapped() || !data.scope().equals(MemorySegment.NULL.scope()));
    }

    private static Module module(ClientUpdate client, String module, String keyA, Tensor a, String keyB, Tensor b) {
        if (a.rank() != 2 || b.rank() != 2) {
            throw invalid(client, module, "factors must be 2-D, got lora_A " + a + " and lora_B " + b);
        }
        long rank = a.dim(0);
        if (b.dim(1) != rank) {
            throw invalid(client, module, "lora_A " + Arrays.toString(a.shape()) + " has rank " + rank
                    + " but lora_B " + Arrays.toString(b.shape()) + " has rank " + b.dim(1));
        }
        if (rank < 1) {
            throw invalid(client, module, "rank 0 (lora_A " + Arrays.toString(a.shape()) + ")");
        }
        if (a.dim(1) < 1 || b.dim(0) < 1) {
            throw invalid(client, module, "empty factor: lora_A " + Arrays.toString(a.shape())
                    + ", lora_B " + Arrays.toString(b.shape()));
        }
        if (a.elementCount() > Integer.MAX_VALUE - 8 || b.elementCount() > Integer.MAX_VALUE - 8) {
            throw invalid(client, module, "factor of more than 2^31 elements is not supported");
        }
        int r = (int) rank;
        return new Module(module, keyA, keyB,
                Matrix.dense(a.data(), a.dtype(), r, (int) a.dim(1)),
                Matrix.dense(b.data(), b.dtype(), (int) b.dim(0), r), r);
    }

    private static Other other(ClientUpdate client, String key, Tensor t) {
        if (t.elementCount() > Integer.MAX_VALUE - 8) {
            throw invalid(client, key, "tensor of more than 2^31 elements is not supported");
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

    static InvalidUpdateException invalid(ClientUpdate client, String module, String problem) {
        return new InvalidUpdateException(client.clientId(), client.source(), module, problem, null);
    }

    InvalidUpdateException invalid(String module, String problem) {
        return invalid(client, module, problem);
    }
}
