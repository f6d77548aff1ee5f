package io.fedlora;

import io.fedlora.tensor.DType;

import io.fedlora.tensor.Tensor;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * The entry point for a federated-learning server: aggregates LoRA client updates of different
 * ranks into one global adapter, in one call ({@link #aggregate}) or client by client
 * ({@link #newRound}). It validates everything and hands the arithmetic to a kernels backend.
 *
 * <pre>{@code
 * try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.REPLICATION).build()) {
 *     Map<String, Tensor> global = aggregator.aggregate(List.of(
 *             ClientUpdate.of("phone-1", 120, phoneAdapter),     // rank 4
 *             ClientUpdate.of("laptop-7", 800, laptopAdapter))); // rank 16
 *     Map<String, Tensor> forPhone = Aggregator.truncate(global, 4);
 * }
 * }</pre>
 *
 * Thread-safe; an aggregator may serve many rounds at once.
 */
public final class Aggregator implements AutoCloseable {

    /** Which factor of a module a padding operation applies to. */
    public enum Factor {
        /** {@code lora_A}, {@code [r, in]}: components are rows. */
        A,
        /** {@code lora_B}, {@code [out, r]}: components are columns. */
        B
    }

    final Strategy strategy;
    final int globalRank;
    final boolean allowMissing;
    final LoraScale foldScale;
    final Kernels kernels;
    private final boolean ownsKernels;

    private Aggregator(Builder b) {
        this.strategy = b.strategy;
        this.globalRank = b.globalRank;
        this.allowMissing = b.allowMissing;
        this.foldScale = b.foldScale;
        if (b.kernels != null) {
            this.kernels = b.kernels;
            this.ownsKernels = false;
        } else if (b.backend == null && b.threads == 0) {
            this.kernels = Backends.get();
            this.ownsKernels = false;
        } else {
            this.kernels = Backends.create(b.backend == null ? Backends.configuredName() : b.backend,
                    b.threads == 0 ? Backends.defaultThreads() : b.threads);
            this.ownsKernels = true;
        }
    }

    public static Builder builder() {
        return new Builder();
    }

    public Strategy strategy() {
        return strategy;
    }

    /** The fixed global rank, or 0 when each module takes its largest client rank. */
    public int globalRank() {
        return globalRank;
    }

    /** The backend doing the arithmetic: "cuda", "vector" or "scalar". */
    public String backendName() {
        return kernels.name();
    }

    public Kernels kernels() {
        return kernels;
    }

    /** A new streaming round: add clients one at a time (from any threads), then finish. */
    public Round newRound() {
        return new Round(this);
    }

    /**
     * A round holding a partial aggregate that another server exported with {@link Round#toPartial()};
     * merge it into a local round with {@link Round#merge}, or add to it and finish it directly.
     * The partial must come from an aggregator with the same strategy.
     */
    public Round roundFromPartial(Map<String, Tensor> partial) {
        return Round.fromPartial(this, partial);
    }

    /**
     * Aggregates {@code clients} in one pass: each client's bytes are read once, and each output
     * tile is summed over all clients while it sits in cache. Same result as a round that adds
     * the clients in this order. Fails, changing nothing, on the first unusable client.
     *
     * @return the global adapter, float32, keys in the first client's order
     */
    public Map<String, Tensor> aggregate(List<ClientUpdate> clients) {
        if (clients.isEmpty()) {
            throw new IllegalArgumentException("no clients to aggregate");
        }
        List<ParsedUpdate> parsed = new ArrayList<>(clients.size());
        Map<String, int[]> moduleShapes = new LinkedHashMap<>();
        Map<String, long[]> otherShapes = new LinkedHashMap<>();
        for (ClientUpdate client : clients) {
            ParsedUpdate p = ParsedUpdate.parse(client, strategy, kernels, false);
            for (ParsedUpdate.Module m : p.modules.values()) {
                checkModuleShape(moduleShapes, p.client.clientId(), m);
            }
            for (ParsedUpdate.Other o : p.others.values()) {
                checkOtherShape(otherShapes, p.client.clientId(), o);
            }
            parsed.add(p);
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (String module : moduleShapes.keySet()) {
            aggregateModule(module, parsed, out);
        }
        for (String key : otherShapes.keySet()) {
            aggregateOther(key, otherShapes.get(key), parsed, out);
        }
        return orderLikeFirstClient(out, clients.get(0));
    }

    private void aggregateModule(String module, List<ParsedUpdate> parsed, Map<String, Tensor> out) {
        List<ParsedUpdate> owners = new ArrayList<>();
        int maxRank = 0;
        for (ParsedUpdate p : parsed) {
            ParsedUpdate.Module m = p.modules.get(module);
            if (m != null) {
                owners.add(p);
                maxRank = Math.max(maxRank, m.rank());
            }
        }
        checkPresence(module, owners.size(), parsed.size());
        int rank = globalRank > 0 ? globalRank : maxRank;
        ParsedUpdate.Module first = owners.get(0).modules.get(module);
        int in = first.inFeatures(), outFeatures = first.outFeatures();
        Matrix[] as = new Matrix[owners.size()], bs = new Matrix[owners.size()];
        float[] wa = new float[owners.size()], wb = new float[owners.size()];
        double[] ownerWeight = new double[rank];
        double total = 0;
        for (int k = 0; k < owners.size(); k++) {
            ParsedUpdate p = owners.get(k);
            ParsedUpdate.Module m = p.modules.get(module);
            int kept = Math.min(m.rank(), rank);
            double w = p.moduleWeight.get(module);
            as[k] = m.a().corner(kept, in);
            bs[k] = m.b().corner(outFeatures, kept);
            wa[k] = (float) w;
            wb[k] = (float) (w * clientScale(p.client, module, m.rank()));
            for (int i = 0; i < kept; i++) {
                ownerWeight[i] += wa[k];
            }
            total += wa[k];
        }
        float[] scaleA = componentScale(module, ownerWeight, total);
        float[] scaleB = foldedScale(scaleA, module, rank);
        float[] a = new float[Math.multiplyExact(rank, in)];
        float[] b = new float[Math.multiplyExact(outFeatures, rank)];
        reportBad(kernels.weightedSum(a, rank, in, as, wa, scaleA, null), owners, module, "lora_A");
        reportBad(kernels.weightedSum(b, outFeatures, rank, bs, wb, null, scaleB), owners, module, "lora_B");
        out.put(first.keyA(), Tensor.of(a, rank, in));
        out.put(first.keyB(), Tensor.of(b, outFeatures, rank));
    }

    private void aggregateOther(String key, long[] shape, List<ParsedUpdate> parsed, Map<String, Tensor> out) {
        List<ParsedUpdate> owners = new ArrayList<>();
        for (ParsedUpdate p : parsed) {
            if (p.others.containsKey(key)) {
                owners.add(p);
            }
        }
        checkPresence(key, owners.size(), parsed.size());
        Matrix[] sources = new Matrix[owners.size()];
        float[] weights = new float[owners.size()];
        double total = 0;
        for (int k = 0; k < owners.size(); k++) {
            sources[k] = owners.get(k).others.get(key).values();
            weights[k] = (float) owners.get(k).client.weight();
            total += weights[k];
        }
        Matrix shapeOf = sources[0];
        float[] values = new float[Math.toIntExact(shapeOf.size())];
        float[] rowScale = new float[shapeOf.rows()];
        Arrays.fill(rowScale, inverseTotal(key, total));
        reportBad(kernels.weightedSum(values, shapeOf.rows(), shapeOf.cols(), sources, weights, rowScale, null),
                owners, key, "tensor");
        out.put(key, Tensor.of(values, shape));
    }

    private static void reportBad(int bad, List<ParsedUpdate> owners, String module, String what) {
        if (bad < 0) {
            return;
        }
        if (bad < owners.size()) {
            throw new InvalidUpdateException(owners.get(bad).client.clientId(), module, what + " holds NaN or infinity");
        }
        throw new ArithmeticException("module '" + module + "': the weighted sum of " + what
                + " overflows float32; scale the client weights down");
    }

    // ---- shared by batch and streaming -----------------------------------------------------

    /** The first client fixes a module's in/out features; every later one must agree. */
    static void checkModuleShape(Map<String, int[]> shapes, String clientId, ParsedUpdate.Module m) {
        int[] known = shapes.putIfAbsent(m.name(), new int[] {m.inFeatures(), m.outFeatures()});
        if (known != null && (known[0] != m.inFeatures() || known[1] != m.outFeatures())) {
            throw new InvalidUpdateException(clientId, m.name(), "lora_A has " + m.inFeatures() + " input features and lora_B "
                    + m.outFeatures() + " output features, but earlier clients have " + known[0] + " and " + known[1]);
        }
    }

    static void checkOtherShape(Map<String, long[]> shapes, String clientId, ParsedUpdate.Other o) {
        long[] known = shapes.putIfAbsent(o.key(), o.shape());
        if (known != null && !Arrays.equals(known, o.shape())) {
            throw new InvalidUpdateException(clientId, o.key(), "shape " + Arrays.toString(o.shape())
                    + " differs from earlier clients' " + Arrays.toString(known));
        }
    }

    void checkPresence(String module, int have, int clients) {
        if (have != clients && !allowMissing) {
            throw new IllegalArgumentException("module '" + module + "' is in " + have + " of " + clients
                    + " clients; allow missing modules to average it over the clients that have it");
        }
    }

    /** The scale a client's B is multiplied by before averaging: its LoRA scale when folding, else 1. */
    double clientScale(ClientUpdate client, String module, int rank) {
        if (foldScale == null) {
            return 1;
        }
        if (client.scale() == null) {
            throw new InvalidUpdateException(client.clientId(), module, "scales are folded but the client has no LoRA scale");
        }
        return client.scale().of(module, rank);
    }

    /**
     * Per component: {@code 1 / P} (ZERO, NORM) or {@code 1 / P_i}, 0 where no client owns i
     * (REPLICATION). Divisions in double, rounded once to float32.
     */
    float[] componentScale(String module, double[] ownerWeight, double total) {
        float[] scale = new float[ownerWeight.length];
        if (strategy == Strategy.REPLICATION) {
            if (!(total > 0)) {
                inverseTotal(module, total);
            }
            for (int i = 0; i < scale.length; i++) {
                scale[i] = ownerWeight[i] > 0 ? (float) (1.0 / ownerWeight[i]) : 0f;
            }
        } else {
            Arrays.fill(scale, inverseTotal(module, total));
        }
        return scale;
    }

    /** B's column scale: A's, divided by the global LoRA scale when scales are folded. */
    float[] foldedScale(float[] scaleA, String module, int rank) {
        if (foldScale == null) {
            return scaleA;
        }
        double global = foldScale.of(module, rank);
        float[] scale = new float[scaleA.length];
        for (int i = 0; i < scale.length; i++) {
            scale[i] = (float) (scaleA[i] / global);
        }
        return scale;
    }

    private float inverseTotal(String module, double total) {
        if (!(total > 0)) {
            throw new IllegalStateException("module '" + module + "': the clients' total weight is " + total
                    + (strategy == Strategy.NORM ? " (every update has zero norm, so NORM weights are undefined)" : ""));
        }
        return (float) (1.0 / total);
    }

    static Map<String, Tensor> orderLikeFirstClient(Map<String, Tensor> out, ClientUpdate first) {
        Map<String, Tensor> ordered = new LinkedHashMap<>();
        for (String key : first.tensors().keySet()) {
            Tensor t = out.get(key);
            if (t != null) {
                ordered.put(key, t);
            }
        }
        ordered.putAll(out);
        return ordered;
    }

    // ---- download and explicit padding -------------------------------------------------------

    /**
     * What the server sends a client of rank {@code rank} (DESIGN §2): the first {@code rank} rows of
     * each A and columns of each B; other tensors as they are. Uses the process-wide backend.
     */
    public static Map<String, Tensor> truncate(Map<String, Tensor> global, int rank) {
        return truncate(global, rank, Backends.get());
    }

    static Map<String, Tensor> truncate(Map<String, Tensor> global, int rank, Kernels kernels) {
        if (rank < 1) {
            throw new IllegalArgumentException("rank must be >= 1, got " + rank);
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : global.entrySet()) {
            String key = e.getKey();
            Tensor t = e.getValue();
            String[] pair = ParsedUpdate.factorPair(key);
            if (pair == null) {
                out.put(key, t);
                continue;
            }
            if (t.rank() != 2) {
                throw new IllegalArgumentException("'" + key + "' is not a 2-D LoRA factor: " + t);
            }
            boolean isA = key.endsWith(pair[0]);
            long have = isA ? t.dim(0) : t.dim(1);
            if (rank > have) {
                throw new IllegalArgumentException("'" + key + "' has rank " + have + ", cannot truncate to " + rank);
            }
            int rows = (int) t.dim(0), cols = (int) t.dim(1);
            int outRows = isA ? rank : rows, outCols = isA ? cols : rank;
            float[] values = new float[Math.multiplyExact(outRows, outCols)];
            kernels.pad(values, outRows, outCols, Matrix.dense(t.data(), t.dtype(), rows, cols).corner(outRows, outCols), null);
            out.put(key, Tensor.of(values, outRows, outCols));
        }
        return out;
    }

    /** {@code padZero}: A {@code [r, n]} gets zero rows up to {@code [rank, n]}; B {@code [m, r]} zero columns. */
    public Tensor padZero(Tensor factor, Factor which, int rank) {
        return pad(factor, which, rank, null);
    }

    /**
     * {@code padReplicate}: the missing rows of A (columns of B) come from {@code donor}, a
     * {@code [rank, n]} (or {@code [m, rank]}) float tensor; the natural donor is the REPLICATION result.
     */
    public Tensor padReplicate(Tensor factor, Factor which, int rank, Tensor donor) {
        Objects.requireNonNull(donor, "donor");
        return pad(factor, which, rank, donor);
    }

    private Tensor pad(Tensor factor, Factor which, int rank, Tensor donor) {
        if (factor.rank() != 2) {
            throw new IllegalArgumentException("a LoRA factor is 2-D, got " + factor);
        }
        int rows = Math.toIntExact(factor.dim(0)), cols = Math.toIntExact(factor.dim(1));
        int have = which == Factor.A ? rows : cols;
        if (rank < have) {
            throw new IllegalArgumentException("cannot pad rank " + have + " down to " + rank + "; truncate instead");
        }
        int outRows = which == Factor.A ? rank : rows, outCols = which == Factor.A ? cols : rank;
        float[] donorValues = null;
        if (donor != null) {
            if (donor.rank() != 2 || donor.dim(0) != outRows || donor.dim(1) != outCols) {
                throw new IllegalArgumentException("donor must be [" + outRows + ", " + outCols + "], got " + donor);
            }
            donorValues = heapFloats(donor);
        }
        float[] values = new float[Math.multiplyExact(outRows, outCols)];
        kernels.pad(values, outRows, outCols, Matrix.dense(factor.data(), factor.dtype(), rows, cols), donorValues);
        return Tensor.of(values, outRows, outCols);
    }

    /** The float[] behind a float32 heap tensor (read in place), or a float32 copy of any other tensor. */
    private static float[] heapFloats(Tensor t) {
        if (t.dtype() == DType.F32 && t.data().heapBase().orElse(null) instanceof float[] values
                && values.length == t.elementCount()) {
            return values;
        }
        return t.toFloatArray();
    }

    /** Releases the backend if this aggregator created it (a named backend or thread count). */
    @Override
    public void close() {
        if (ownsKernels) {
            kernels.close();
        }
    }

    /** Options; every one has a default: REPLICATION, rank = largest client rank, process backend. */
    public static final class Builder {
        private Strategy strategy = Strategy.REPLICATION;
        private int globalRank;
        private String backend;
        private int threads;
        private boolean allowMissing;
        private LoraScale foldScale;
        private Kernels kernels;

        private Builder() {
        }

        public Builder strategy(Strategy strategy) {
            this.strategy = Objects.requireNonNull(strategy, "strategy");
            return this;
        }

        /** Fixed global rank R for every module; 0 (default) takes each module's largest client rank. */
        public Builder globalRank(int rank) {
            if (rank < 0) {
                throw new IllegalArgumentException("global rank must be >= 0, got " + rank);
            }
            this.globalRank = rank;
            return this;
        }

        /** "auto", "cuda", "vector" or "scalar": a backend of this aggregator's own, closed with it. */
        public Builder backend(String backend) {
            this.backend = backend;
            return this;
        }

        /** CPU threads for this aggregator's own backend; 0 (default) means fedlora.threads or all cores. */
        public Builder threads(int threads) {
            if (threads < 0) {
                throw new IllegalArgumentException("threads must be >= 0, got " + threads);
            }
            this.threads = threads;
            return this;
        }

        /** Average a module over the clients that have it, instead of refusing a module some clients lack. */
        public Builder allowMissing(boolean allowMissing) {
            this.allowMissing = allowMissing;
            return this;
        }

        /**
         * Folds each client's LoRA scale into B before averaging and divides the result's B by
         * {@code global} at the global rank, so that {@code B A} keeps its meaning across ranks
         * (DESIGN §2). Every client must then carry its {@link ClientUpdate#scale()}.
         */
        public Builder foldScale(LoraScale global) {
            this.foldScale = global;
            return this;
        }

        /** A backend the caller owns (not closed by the aggregator); overrides backend and threads. */
        public Builder kernels(Kernels kernels) {
            this.kernels = kernels;
            return this;
        }

        public Aggregator build() {
            return new Aggregator(this);
        }
    }
}
