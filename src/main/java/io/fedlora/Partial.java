package io.fedlora;

import io.fedlora.io.InvalidFileException;
import io.fedlora.io.Safetensors;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A partial aggregate (DESIGN §2, §10): what a round holds, as an immutable value that can leave
 * the JVM. Per module the raw weighted sums of A and B (float32), the owner weight of each
 * component and the total weight (double, exact), the client count and the power of two the
 * weights are measured in; the same for each tensor that is not a LoRA factor; the round's client
 * count; and the {@link Policy} it was summed under. Partials form a monoid: merging adds
 * everything, and {@code finish} divides once. Its size is one global adapter, whatever the
 * client count.
 *
 * <p>A partial of a product-space round ({@link Strategy#SVD}, {@link Strategy#STACK}) holds,
 * per module, every client's factors instead of sums: the stacks {@code As = [A_1; ...; A_K]}
 * ({@code [S, n]}) and {@code Bs = [B_1 ... B_K]} ({@code [m, S]}, {@code S = sum r_k}), float32,
 * in client order, with each client's id, weight {@code p_k}, LoRA scale {@code s_k} (1 unless
 * folding) and rank {@code r_k}. Merging appends; its size is the sum of the clients' factor
 * sizes, {@code (m + n) S * 4} bytes per module (format 3; factor-sum
 * partials keep format 2).
 *
 * <p>{@link #tensors()} and {@link #metadata()} are what a safetensors file holds (the sums or
 * stacks under their PEFT keys; the bookkeeping as JSON in the header's {@code __metadata__}), and
 * {@link #of} reads them back, refusing a malformed partial whole.
 */
public final class Partial {

    /** The metadata key holding the bookkeeping. */
    public static final String METADATA_KEY = "fedlora.partial";
    static final long FORMAT = 2;
    /** The format of a product-space partial (per-client factors, not sums). */
    static final long PRODUCT_FORMAT = 3;

    /** One module's raw sums and bookkeeping. */
    record ModulePart(String module, String keyA, String keyB, int inFeatures, int outFeatures, int rank,
            Tensor sumA, Tensor sumB, double[] ownerWeight, double totalWeight, long clients, int exponent) {
    }

    /**
     * One module of a product-space partial: the clients' factors stacked in client order,
     * {@code stackA = [A_1; ...; A_K]} ({@code [S, n]}) and {@code stackB = [B_1 ... B_K]}
     * ({@code [m, S]}), and per client its id, weight, LoRA scale and rank.
     */
    record FactorPart(String module, String keyA, String keyB, int inFeatures, int outFeatures, Tensor stackA,
            Tensor stackB, List<String> clientIds, double[] weights, double[] scales, int[] ranks) {
        int stackRank() {
            return (int) stackA.dim(0);
        }
    }

    /** The raw sums and bookkeeping of a tensor that is not a LoRA factor. */
    record TensorPart(String key, long[] shape, Tensor sums, double totalWeight, long clients, int exponent) {
    }

    private final Policy policy;
    private final long clientCount;
    final Map<String, ModulePart> modules;
    /** The modules of a product-space partial (then {@link #modules} is empty). */
    final Map<String, FactorPart> factors;
    final Map<String, TensorPart> others;
    /** The output keys in the order the round first saw them. */
    final List<String> keyOrder;

    Partial(Policy policy, long clientCount, Map<String, ModulePart> modules, Map<String, FactorPart> factors,
            Map<String, TensorPart> others, List<String> keyOrder) {
        this.policy = policy;
        this.clientCount = clientCount;
        this.modules = Collections.unmodifiableMap(new LinkedHashMap<>(modules));
        this.factors = Collections.unmodifiableMap(new LinkedHashMap<>(factors));
        this.others = Collections.unmodifiableMap(new LinkedHashMap<>(others));
        this.keyOrder = List.copyOf(keyOrder);
    }

    public Policy policy() {
        return policy;
    }

    /** Clients summed into this partial, merged rounds' clients included. */
    public long clientCount() {
        return clientCount;
    }

    /**
     * The raw sums (or, for SVD and STACK, the stacked client factors) under their PEFT keys,
     * float32, in the order the round first saw them.
     */
    public Map<String, Tensor> tensors() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (ModulePart m : modules.values()) {
            out.put(m.keyA(), m.sumA());
            out.put(m.keyB(), m.sumB());
        }
        for (FactorPart f : factors.values()) {
            out.put(f.keyA(), f.stackA());
            out.put(f.keyB(), f.stackB());
        }
        for (TensorPart t : others.values()) {
            out.put(t.key(), t.sums());
        }
        return Aggregator.orderLike(out, keyOrder);
    }

    /**
     * This partial with each module's clients in the order of {@code clientIds}. SVD and STACK
     * results follow the order the clients were added in (STACK's components are in client
     * order), so an engine whose reduction merges partials in an order of its own (Spark's
     * {@code treeReduce}) restores the manifest's order before it finishes, and gets the result of
     * a batch in that order. A factor-sum partial records no order and is returned as it is.
     *
     * @throws IllegalArgumentException naming a client of the partial that {@code clientIds} lacks
     */
    public Partial inClientOrder(List<String> clientIds) {
        if (factors.isEmpty()) {
            return this;
        }
        Map<String, Integer> position = new java.util.HashMap<>();
        for (int i = 0; i < clientIds.size(); i++) {
            position.putIfAbsent(clientIds.get(i), i);
        }
        Map<String, FactorPart> ordered = new LinkedHashMap<>();
        for (FactorPart f : factors.values()) {
            int k = f.ranks().length;
            Integer[] order = new Integer[k];
            for (int c = 0; c < k; c++) {
                order[c] = c;
                if (!position.containsKey(f.clientIds().get(c))) {
                    throw new IllegalArgumentException("module '" + f.module() + "': client '" + f.clientIds().get(c)
                            + "' of the partial is not in the given client order");
                }
            }
            Arrays.sort(order, java.util.Comparator.comparingInt(c -> position.get(f.clientIds().get(c)))); // stable
            ordered.put(f.module(), permuted(f, order));
        }
        return new Partial(policy, clientCount, modules, ordered, others, keyOrder);
    }

    /** {@code f} with its clients in {@code order} (positions in {@code f}). */
    private static FactorPart permuted(FactorPart f, Integer[] order) {
        int k = order.length, n = f.inFeatures(), m = f.outFeatures(), s = f.stackRank();
        boolean identity = true;
        for (int c = 0; c < k; c++) {
            identity &= order[c] == c;
        }
        if (identity) {
            return f;
        }
        int[] offsets = new int[k + 1];
        for (int c = 0; c < k; c++) {
            offsets[c + 1] = offsets[c] + f.ranks()[c];
        }
        float[] a = f.stackA().toFloatArray(), b = f.stackB().toFloatArray();
        float[] stackA = new float[a.length], stackB = new float[b.length];
        List<String> ids = new ArrayList<>(k);
        double[] weights = new double[k], scales = new double[k];
        int[] ranks = new int[k];
        int to = 0;
        for (int c = 0; c < k; c++) {
            int from = offsets[order[c]], r = f.ranks()[order[c]];
            System.arraycopy(a, from * n, stackA, to * n, r * n);
            for (int row = 0; row < m; row++) {
                System.arraycopy(b, row * s + from, stackB, row * s + to, r);
            }
            ids.add(f.clientIds().get(order[c]));
            weights[c] = f.weights()[order[c]];
            scales[c] = f.scales()[order[c]];
            ranks[c] = r;
            to += r;
        }
        return new FactorPart(f.module(), f.keyA(), f.keyB(), n, m, Tensor.of(stackA, s, n), Tensor.of(stackB, m, s),
                List.copyOf(ids), weights, scales, ranks);
    }

    /** The bookkeeping as one JSON document under {@link #METADATA_KEY}. */
    public Map<String, String> metadata() {
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("format", policy.strategy().productSpace() ? PRODUCT_FORMAT : FORMAT);
        doc.put("policy", policyJson(policy));
        doc.put("clients", clientCount);
        List<Object> moduleList = new ArrayList<>();
        for (ModulePart m : modules.values()) {
            Map<String, Object> j = new LinkedHashMap<>();
            j.put("module", m.module());
            j.put("keyA", m.keyA());
            j.put("keyB", m.keyB());
            j.put("inFeatures", (long) m.inFeatures());
            j.put("outFeatures", (long) m.outFeatures());
            j.put("rank", (long) m.rank());
            j.put("ownerWeight", m.ownerWeight());
            j.put("totalWeight", m.totalWeight());
            j.put("clients", m.clients());
            j.put("exponent", (long) m.exponent());
            moduleList.add(j);
        }
        for (FactorPart f : factors.values()) {
            Map<String, Object> j = new LinkedHashMap<>();
            j.put("module", f.module());
            j.put("keyA", f.keyA());
            j.put("keyB", f.keyB());
            j.put("inFeatures", (long) f.inFeatures());
            j.put("outFeatures", (long) f.outFeatures());
            j.put("rank", (long) f.stackRank());
            j.put("clientIds", new ArrayList<Object>(f.clientIds()));
            j.put("weights", f.weights());
            j.put("scales", f.scales());
            j.put("ranks", Arrays.stream(f.ranks()).asLongStream().toArray());
            moduleList.add(j);
        }
        doc.put("modules", moduleList);
        List<Object> tensorList = new ArrayList<>();
        for (TensorPart t : others.values()) {
            Map<String, Object> j = new LinkedHashMap<>();
            j.put("key", t.key());
            j.put("shape", t.shape());
            j.put("totalWeight", t.totalWeight());
            j.put("clients", t.clients());
            j.put("exponent", (long) t.exponent());
            tensorList.add(j);
        }
        doc.put("tensors", tensorList);
        doc.put("keyOrder", new ArrayList<Object>(keyOrder));
        return Map.of(METADATA_KEY, Json.write(doc, false));
    }

    /**
     * This partial as bytes, to send to another JVM or store: a safetensors image
     * ({@link io.fedlora.io.Safetensors#toBytes}) holding {@link #tensors()} and {@link #metadata()},
     * so the whole policy, the client counts and the weights travel with the sums. Its size is
     * one global adapter's float32 sums plus a header; {@link #fromBytes} reads it back.
     *
     * @throws IllegalArgumentException when the image does not fit one Java array (2 GB)
     */
    public byte[] toBytes() {
        return Safetensors.toBytes(tensors(), metadata());
    }

    /**
     * Reads a partial from {@link #toBytes()}'s bytes (a heap or native segment, e.g. a mapped
     * file), refusing a malformed one whole as {@link #of} does; the sums are views into
     * {@code bytes}, not copies, so {@code bytes} must stay alive while the partial is used.
     *
     * @throws IllegalArgumentException naming what is wrong: not a safetensors image, or not a well-formed partial
     */
    public static Partial fromBytes(MemorySegment bytes) {
        Safetensors image;
        try {
            image = Safetensors.read(bytes, "partial");
        } catch (InvalidFileException e) {
            throw bad("not a safetensors image: " + e.problem());
        }
        return of(image.tensors(), image.metadata());
    }

    /**
     * Reads a partial back from {@link #tensors()} and {@link #metadata()} (as a safetensors file
     * gives them), refusing it whole, with a one-line reason, when anything is malformed: no or
     * unknown bookkeeping, a tensor missing, extra or of the wrong shape or dtype, sums that are
     * not finite, owner or total weights that are negative or not finite, negative counts; for a
     * product-space partial (format 3) also client ranks that are not
     * positive or do not add up to the stacks' rank, per-client lists of different lengths,
     * client weights that are negative or not finite, LoRA scales that are not finite and
     * positive (or not 1 without folding), and a format that does not match the policy's strategy.
     */
    public static Partial of(Map<String, Tensor> tensors, Map<String, String> metadata) {
        String text = metadata == null ? null : metadata.get(METADATA_KEY);
        if (text == null) {
            throw bad("no '" + METADATA_KEY + "' metadata (not a fedlora partial)");
        }
        Map<String, Object> doc;
        try {
            doc = object(Json.parse(text), METADATA_KEY);
        } catch (IOException e) {
            throw bad("its metadata is not JSON: " + e.getMessage().lines().findFirst().orElse(""));
        }
        boolean product = Long.valueOf(PRODUCT_FORMAT).equals(doc.get("format"));
        if (!product && !Long.valueOf(FORMAT).equals(doc.get("format"))) {
            throw bad("format " + doc.get("format") + " is neither " + FORMAT + " (factor sums) nor " + PRODUCT_FORMAT
                    + " (product-space factors)");
        }
        Policy policy = policyOf(object(doc.get("policy"), "policy"));
        if (product != policy.strategy().productSpace()) {
            throw bad("format " + doc.get("format") + (product ? " (product-space factors)" : " (factor sums)")
                    + " does not hold a " + policy.strategy().cliName() + " partial");
        }
        long clients = count(doc.get("clients"), "clients");
        Map<String, ModulePart> modules = new LinkedHashMap<>();
        Map<String, FactorPart> factorParts = new LinkedHashMap<>();
        java.util.Set<String> used = new java.util.HashSet<>();
        for (Object o : list(doc.get("modules"), "modules")) {
            Map<String, Object> j = object(o, "module");
            if (product) {
                FactorPart f = factorPart(j, tensors, policy, clients);
                if (modules.containsKey(f.module()) || factorParts.put(f.module(), f) != null) {
                    throw bad("module '" + f.module() + "' appears twice");
                }
                used.add(f.keyA());
                used.add(f.keyB());
                continue;
            }
            String module = string(j.get("module"), "module name");
            String keyA = string(j.get("keyA"), "keyA of '" + module + "'");
            String keyB = string(j.get("keyB"), "keyB of '" + module + "'");
            int in = positiveInt(j.get("inFeatures"), module), out = positiveInt(j.get("outFeatures"), module);
            int rank = positiveInt(j.get("rank"), module);
            if (policy.globalRank() > 0 && rank != policy.globalRank()) {
                throw bad("module '" + module + "' has rank " + rank + " but the policy's global rank is " + policy.globalRank());
            }
            Tensor a = sums(tensors, keyA, new long[] {rank, in}), b = sums(tensors, keyB, new long[] {out, rank});
            double[] owner = weights(j.get("ownerWeight"), module);
            if (owner.length != rank) {
                throw bad("module '" + module + "' has " + owner.length + " owner weights for rank " + rank);
            }
            double total = weight(j.get("totalWeight"), module);
            long moduleClients = count(j.get("clients"), "clients of '" + module + "'");
            if (moduleClients > clients) {
                throw bad("module '" + module + "' counts " + moduleClients + " clients of the partial's " + clients);
            }
            int exponent = exponent(j.get("exponent"), module);
            if (modules.put(module, new ModulePart(module, keyA, keyB, in, out, rank, a, b, owner, total, moduleClients,
                    exponent)) != null) {
                throw bad("module '" + module + "' appears twice");
            }
            used.add(keyA);
            used.add(keyB);
        }
        Map<String, TensorPart> others = new LinkedHashMap<>();
        for (Object o : list(doc.get("tensors"), "tensors")) {
            Map<String, Object> j = object(o, "tensor");
            String key = string(j.get("key"), "tensor key");
            List<Object> dims = list(j.get("shape"), "shape of '" + key + "'");
            long[] shape = new long[dims.size()];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = count(dims.get(i), "shape of '" + key + "'");
            }
            Tensor t = sums(tensors, key, shape);
            long tensorClients = count(j.get("clients"), "clients of '" + key + "'");
            if (tensorClients > clients) {
                throw bad("tensor '" + key + "' counts " + tensorClients + " clients of the partial's " + clients);
            }
            if (others.put(key, new TensorPart(key, shape, t, weight(j.get("totalWeight"), key), tensorClients,
                    exponent(j.get("exponent"), key))) != null || !used.add(key)) {
                throw bad("tensor '" + key + "' appears twice");
            }
        }
        for (String key : tensors.keySet()) {
            if (!used.contains(key)) {
                throw bad("tensor '" + key + "' is not in the partial's bookkeeping");
            }
        }
        List<String> order = new ArrayList<>();
        for (Object o : list(doc.get("keyOrder"), "keyOrder")) {
            order.add(string(o, "keyOrder entry"));
        }
        return new Partial(policy, clients, modules, factorParts, others, order);
    }

    /** One module of a product-space partial, checked whole: shapes, ranks adding up to S, weights, scales. */
    private static FactorPart factorPart(Map<String, Object> j, Map<String, Tensor> tensors, Policy policy, long clients) {
        String module = string(j.get("module"), "module name");
        String keyA = string(j.get("keyA"), "keyA of '" + module + "'");
        String keyB = string(j.get("keyB"), "keyB of '" + module + "'");
        int in = positiveInt(j.get("inFeatures"), module), out = positiveInt(j.get("outFeatures"), module);
        int rank = positiveInt(j.get("rank"), module);
        List<Object> ids = list(j.get("clientIds"), "client ids of '" + module + "'");
        List<Object> rankList = list(j.get("ranks"), "client ranks of '" + module + "'");
        double[] weights = weights(j.get("weights"), module);
        List<Object> scaleList = list(j.get("scales"), "client scales of '" + module + "'");
        int k = ids.size();
        if (k == 0 || rankList.size() != k || weights.length != k || scaleList.size() != k) {
            throw bad("module '" + module + "' has " + k + " client ids, " + rankList.size() + " ranks, "
                    + weights.length + " weights and " + scaleList.size() + " scales (one of each per client, at least one)");
        }
        if (k > clients) {
            throw bad("module '" + module + "' holds " + k + " clients of the partial's " + clients);
        }
        List<String> clientIds = new ArrayList<>(k);
        int[] ranks = new int[k];
        double[] scales = new double[k];
        long sum = 0;
        for (int c = 0; c < k; c++) {
            clientIds.add(string(ids.get(c), "client id of '" + module + "'"));
            long r = count(rankList.get(c), "a client rank of '" + module + "'");
            if (r < 1 || r > Integer.MAX_VALUE - 8) {
                throw bad("module '" + module + "', client '" + clientIds.get(c) + "' has rank " + r);
            }
            ranks[c] = (int) r;
            sum += r;
            double s = number(scaleList.get(c), "a LoRA scale of '" + module + "'");
            if (!(s > 0) || !Double.isFinite(s) || !policy.folds() && s != 1) {
                throw bad("module '" + module + "', client '" + clientIds.get(c) + "' has LoRA scale " + s
                        + (policy.folds() ? " (not finite and > 0)" : " but the policy does not fold scales (must be 1)"));
            }
            scales[c] = s;
        }
        if (sum != rank) {
            throw bad("module '" + module + "': the client ranks add up to " + sum + ", not its stack rank " + rank);
        }
        Tensor a = sums(tensors, keyA, new long[] {rank, in}), b = sums(tensors, keyB, new long[] {out, rank});
        return new FactorPart(module, keyA, keyB, in, out, a, b, List.copyOf(clientIds), weights, scales, ranks);
    }

    private static final ValueLayout.OfFloat FLOAT_LE = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private static Tensor sums(Map<String, Tensor> tensors, String key, long[] shape) {
        Tensor t = tensors.get(key);
        if (t == null) {
            throw bad("tensor '" + key + "' is missing");
        }
        if (t.dtype() != DType.F32 || !Arrays.equals(t.shape(), shape)) {
            throw bad("tensor '" + key + "' is " + t + ", expected F32" + Arrays.toString(shape));
        }
        MemorySegment data = t.data();
        long n = t.elementCount();
        for (long i = 0; i < n; i++) {
            if (!Float.isFinite(data.getAtIndex(FLOAT_LE, i))) {
                throw bad("tensor '" + key + "' holds NaN or infinity");
            }
        }
        return t;
    }

    static Map<String, Object> policyJson(Policy policy) {
        Map<String, Object> j = new LinkedHashMap<>();
        j.put("strategy", policy.strategy().name());
        j.put("globalRank", (long) policy.globalRank());
        j.put("allowMissing", policy.allowMissing());
        LoraScale fold = policy.foldScale();
        if (fold != null) {
            Map<String, Object> f = new LinkedHashMap<>();
            f.put("alpha", fold.alpha());
            f.put("rsLora", fold.rsLora());
            f.put("alphaPattern", new LinkedHashMap<String, Object>(fold.alphaPattern()));
            j.put("foldScale", f);
        } else {
            j.put("foldScale", null);
        }
        j.put("split", policy.split().name());
        return j;
    }

    static Policy policyOf(Map<String, Object> j) {
        Strategy strategy;
        try {
            strategy = Strategy.valueOf(string(j.get("strategy"), "policy strategy"));
        } catch (IllegalArgumentException e) {
            throw bad("unknown strategy '" + j.get("strategy") + "'");
        }
        int rank = (int) Math.min(count(j.get("globalRank"), "globalRank"), Integer.MAX_VALUE);
        if (!(j.get("allowMissing") instanceof Boolean allow)) {
            throw bad("policy allowMissing is not a boolean");
        }
        LoraScale fold = null;
        if (j.get("foldScale") != null) {
            Map<String, Object> f = object(j.get("foldScale"), "foldScale");
            Map<String, Double> pattern = new LinkedHashMap<>();
            object(f.get("alphaPattern"), "alphaPattern").forEach((k, v) -> pattern.put(k, number(v, "alpha_pattern")));
            if (!(f.get("rsLora") instanceof Boolean rs)) {
                throw bad("foldScale rsLora is not a boolean");
            }
            try {
                fold = new LoraScale(number(f.get("alpha"), "alpha"), rs, pattern);
            } catch (IllegalArgumentException e) {
                throw bad(e.getMessage());
            }
        }
        // Partials written before the split existed have none: FLEXLORA, what they were computed with.
        io.fedlora.product.Split split = io.fedlora.product.Split.FLEXLORA;
        if (j.containsKey("split")) {
            String name = string(j.get("split"), "policy split");
            try {
                split = io.fedlora.product.Split.valueOf(name);
            } catch (IllegalArgumentException e) {
                throw bad("unknown split '" + name + "'; expected FLEXLORA or BALANCED");
            }
        }
        return new Policy(strategy, rank, allow, fold, split);
    }

    private static IllegalArgumentException bad(String why) {
        return new IllegalArgumentException("malformed fedlora partial: " + why);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> object(Object o, String what) {
        if (o instanceof Map<?, ?> map) {
            return (Map<String, Object>) map;
        }
        throw bad(what + " is not a JSON object");
    }

    @SuppressWarnings("unchecked")
    private static List<Object> list(Object o, String what) {
        if (o instanceof List<?> l) {
            return (List<Object>) l;
        }
        throw bad(what + " is not a JSON array");
    }

    private static String string(Object o, String what) {
        if (o instanceof String s) {
            return s;
        }
        throw bad(what + " is not a string");
    }

    private static long count(Object o, String what) {
        if (o instanceof Long l && l >= 0) {
            return l;
        }
        throw bad(what + " is " + o + ", not a count");
    }

    private static int positiveInt(Object o, String module) {
        long v = count(o, "a dimension of '" + module + "'");
        if (v < 1 || v > Integer.MAX_VALUE - 8) {
            throw bad("module '" + module + "' has a dimension of " + v);
        }
        return (int) v;
    }

    private static int exponent(Object o, String name) {
        if (o instanceof Long l && l >= Double.MIN_EXPONENT && l <= Double.MAX_EXPONENT) {
            return (int) (long) l;
        }
        throw bad("the weight exponent of '" + name + "' is " + o);
    }

    private static double number(Object o, String what) {
        if (o instanceof Number n) {
            return n.doubleValue();
        }
        throw bad(what + " is not a number");
    }

    private static double weight(Object o, String name) {
        double w = number(o, "a weight of '" + name + "'");
        if (!(w >= 0) || !Double.isFinite(w)) {
            throw bad("'" + name + "' has weight " + w + " (negative or not finite)");
        }
        return w;
    }

    private static double[] weights(Object o, String name) {
        List<Object> l = list(o, "owner weights of '" + name + "'");
        double[] out = new double[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = weight(l.get(i), name);
        }
        return out;
    }
}
