package io.fedlora;

import io.fedlora.tensor.DType;

import io.fedlora.tensor.Tensor;

import io.fedlora.kernels.Backends;
import io.fedlora.product.FidelityReport;
import io.fedlora.product.ProductSpace;
import io.fedlora.product.Split;
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
 * ({@link #newRound}), under one {@link Policy}. It validates everything and hands the
 * arithmetic to a kernels backend.
 *
 * <pre>{@code
 * try (Aggregator aggregator = Aggregator.of(Policy.of(Strategy.REPLICATION))) {
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

    private final Policy policy;
    final Kernels kernels;
    private final boolean ownsKernels;
    /** True when the backend was asked for (by name or instance), false when {@code auto} chose it. */
    private final boolean backendRequested;
    private volatile ProductSpace productSpace;

    private Aggregator(Builder b) {
        this.policy = new Policy(b.strategy, b.globalRank, b.allowMissing, b.foldScale, b.split);
        if (b.kernels != null) {
            this.kernels = b.kernels;
            this.ownsKernels = false;
            this.backendRequested = true;
        } else if (b.backend == null && b.threads == 0) {
            // auto's rule (CudaAutoRule): the product-space strategies are dense algebra, the rest weighted sums.
            this.kernels = Backends.get(policy.strategy().productSpace());
            this.ownsKernels = false;
            this.backendRequested = !"auto".equals(Backends.configuredName());
        } else {
            String name = b.backend == null ? Backends.configuredName() : b.backend;
            this.kernels = Backends.create(name, b.threads == 0 ? Backends.defaultThreads() : b.threads,
                    policy.strategy().productSpace());
            this.ownsKernels = true;
            this.backendRequested = !"auto".equalsIgnoreCase(name.trim());
        }
    }

    public static Builder builder() {
        return new Builder();
    }

    /** An aggregator for {@code policy} on the process-wide backend. */
    public static Aggregator of(Policy policy) {
        return builder().policy(policy).build();
    }

    /** What this aggregator computes; rounds and partials merge when their policies are equal. */
    public Policy policy() {
        return policy;
    }

    public Strategy strategy() {
        return policy.strategy();
    }

    /** The fixed global rank, or 0 when each module takes its largest client rank. */
    public int globalRank() {
        return policy.globalRank();
    }

    /** The backend doing the arithmetic: "cuda", "vector" or "scalar". */
    public String backendName() {
        return kernels.name();
    }

    /**
     * A new streaming round: add clients one at a time (from any threads), then finish. Under SVD
     * and STACK the round keeps a float32 copy of every client's factors, {@code (m + n) * sum r_k * 4}
     * bytes per module ({@link Round#factorBytes()}); under the other strategies one global
     * adapter's sums. Finish the round before closing this aggregator.
     */
    public Round newRound() {
        return new Round(policy, kernels, this::productSpace);
    }

    /**
     * A round holding {@code partial} (exported by {@link Round#toPartial()} here or on another
     * server with an equal policy), to add to, merge or finish.
     */
    public Round roundFromPartial(Partial partial) {
        Round round = newRound();
        try {
            round.mergePartial(partial);
        } catch (RuntimeException e) {
            round.close();
            throw e;
        }
        return round;
    }

    /**
     * Aggregates {@code clients} in one pass: each client's bytes are read once, and each output
     * tile is summed over all clients while it sits in cache. Same result, bit for bit, as a round
     * that adds the clients in this order. Fails on the first unusable client, naming it.
     *
     * @return the global adapter, float32, keys in the first client's order
     */
    public Map<String, Tensor> aggregate(List<ClientUpdate> clients) {
        if (clients.isEmpty()) {
            throw new IllegalArgumentException("no clients to aggregate");
        }
        List<ParsedUpdate> parsed = new ArrayList<>(clients.size());
        Shapes shapes = admit(clients, parsed);
        // The product-space strategies do not sum through the fused kernel, which finds NaN and
        // infinity as it sums: they scan every value first.
        boolean productSpace = policy.strategy().productSpace();
        List<Map<String, Double>> weights = new ArrayList<>(parsed.size());
        for (ParsedUpdate p : parsed) {
            weights.add(Screen.moduleWeights(p, policy.strategy(), kernels, productSpace));
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        try {
            for (String module : shapes.modules.keySet()) {
                if (productSpace) {
                    ProductModules.aggregate(module, owners(module, parsed), policy, productSpace(), out);
                } else {
                    aggregateModule(module, parsed, weights, out);
                }
            }
            for (String key : shapes.others.keySet()) {
                aggregateOther(key, shapes.others.get(key), parsed, out);
            }
        } catch (RuntimeException | InternalError e) {
            if (Screen.isReadFault(e)) {
                throw Screen.unreadable(whichUnreadable(parsed, e), e);
            }
            throw e;
        }
        return orderLike(out, clients.get(0).tensors().keySet());
    }

    /**
     * Parses every client into {@code parsed} (structure only), then checks them against each other
     * in client order: the first unusable client is refused, naming it.
     */
    private Shapes admit(List<ClientUpdate> clients, List<ParsedUpdate> parsed) {
        for (ClientUpdate client : clients) {
            parsed.add(ParsedUpdate.parse(client));
        }
        Shapes shapes = new Shapes(policy.allowMissing());
        for (ParsedUpdate p : parsed) {
            shapes.admit(p);
        }
        return shapes;
    }

    /** The clients that have {@code module}, in client order. */
    private static List<ParsedUpdate> owners(String module, List<ParsedUpdate> parsed) {
        List<ParsedUpdate> owners = new ArrayList<>();
        for (ParsedUpdate p : parsed) {
            if (p.modules.containsKey(module)) {
                owners.add(p);
            }
        }
        return owners;
    }

    /** The product-space engine for SVD, STACK and the fidelity report, made on first use. */
    ProductSpace productSpace() {
        ProductSpace ps = productSpace;
        if (ps == null) {
            synchronized (this) {
                if (productSpace == null) {
                    productSpace = new ProductSpace(ProductSpace.gramKernelsFor(kernels, backendRequested),
                            Backends.defaultThreads());
                }
                ps = productSpace;
            }
        }
        return ps;
    }

    /**
     * The fidelity report (DESIGN §9): per module and overall, how far each of {@code strategies}
     * would be, under this aggregator's global rank, folding and missing-module settings, from the
     * exact weighted average {@code dW*} and from the rank-aware average, also after truncation to
     * each client rank. Computed from float64 Gram matrices of the clients' factors, never by
     * forming {@code m x n}; validates the clients as {@link #aggregate} does.
     */
    public FidelityReport fidelity(List<ClientUpdate> clients, List<Strategy> strategies) {
        if (clients.isEmpty()) {
            throw new IllegalArgumentException("no clients to report on");
        }
        List<ParsedUpdate> parsed = new ArrayList<>(clients.size());
        Shapes shapes = admit(clients, parsed);
        for (ParsedUpdate p : parsed) {
            Screen.moduleWeights(p, Strategy.ZERO, kernels, true);
        }
        List<FidelityReport.ModuleInput> inputs = new ArrayList<>();
        for (String module : shapes.modules.keySet()) {
            inputs.add(ProductModules.input(module, owners(module, parsed), policy));
        }
        List<String> names = strategies.stream().map(Strategy::cliName).toList();
        try {
            return FidelityReport.compute(productSpace(), inputs, names);
        } catch (RuntimeException | InternalError e) {
            if (Screen.isReadFault(e)) {
                throw Screen.unreadable(whichUnreadable(parsed, e), e);
            }
            throw e;
        }
    }

    private void aggregateModule(String module, List<ParsedUpdate> parsed, List<Map<String, Double>> weights,
            Map<String, Tensor> out) {
        List<ParsedUpdate> owners = new ArrayList<>();
        List<Double> ownerWeights = new ArrayList<>();
        int maxRank = 0;
        double maxWeight = 0;
        for (int k = 0; k < parsed.size(); k++) {
            ParsedUpdate.Module m = parsed.get(k).modules.get(module);
            if (m != null) {
                owners.add(parsed.get(k));
                double w = weights.get(k).get(module);
                ownerWeights.add(w);
                maxRank = Math.max(maxRank, m.rank());
                maxWeight = Math.max(maxWeight, w);
            }
        }
        Book book = new Book(module, policy, 0);
        book.grow(book.rankFor(maxRank));
        book.fixExponent(maxWeight);
        int rank = book.rank;
        ParsedUpdate.Module first = owners.get(0).modules.get(module);
        int in = first.inFeatures(), outFeatures = first.outFeatures();
        Matrix[] as = new Matrix[owners.size()], bs = new Matrix[owners.size()];
        float[] wa = new float[owners.size()], wb = new float[owners.size()];
        for (int k = 0; k < owners.size(); k++) {
            ParsedUpdate p = owners.get(k);
            ParsedUpdate.Module m = p.modules.get(module);
            double w = ownerWeights.get(k);
            Book.Contribution c = book.contribution(p, m.rank(), w, Book.clientScale(policy, p, module, m.rank()));
            as[k] = m.a().corner(c.kept(), in);
            bs[k] = m.b().corner(outFeatures, c.kept());
            wa[k] = c.weightA();
            wb[k] = c.weightB();
            book.record(w, c);
        }
        float[] scaleA = book.scaleA();
        float[] scaleB = book.scaleB(scaleA);
        float[] a = new float[Math.multiplyExact(rank, in)];
        float[] b = new float[Math.multiplyExact(outFeatures, rank)];
        reportBad(kernels.weightedSum(a, rank, in, as, wa, scaleA, null), owners, module, "lora_A");
        reportBad(kernels.weightedSum(b, outFeatures, rank, bs, wb, null, scaleB), owners, module, "lora_B");
        out.put(first.keyA(), Tensor.of(a, rank, in));
        out.put(first.keyB(), Tensor.of(b, outFeatures, rank));
    }

    private void aggregateOther(String key, long[] shape, List<ParsedUpdate> parsed, Map<String, Tensor> out) {
        List<ParsedUpdate> owners = new ArrayList<>();
        double maxWeight = 0;
        for (ParsedUpdate p : parsed) {
            if (p.others.containsKey(key)) {
                owners.add(p);
                maxWeight = Math.max(maxWeight, p.client.weight());
            }
        }
        Book book = new Book(key, policy, 0);
        book.fixExponent(maxWeight);
        Matrix[] sources = new Matrix[owners.size()];
        float[] weights = new float[owners.size()];
        for (int k = 0; k < owners.size(); k++) {
            ParsedUpdate p = owners.get(k);
            Book.Contribution c = book.contribution(p, 0, p.client.weight(), 1);
            sources[k] = p.others.get(key).values();
            weights[k] = c.weightA();
            book.record(p.client.weight(), c);
        }
        Matrix shapeOf = sources[0];
        float[] values = new float[Math.toIntExact(shapeOf.size())];
        float[] rowScale = new float[shapeOf.rows()];
        Arrays.fill(rowScale, book.inverseTotal());
        reportBad(kernels.weightedSum(values, shapeOf.rows(), shapeOf.cols(), sources, weights, rowScale, null),
                owners, key, "tensor");
        out.put(key, Tensor.of(values, shape));
    }

    private static void reportBad(int bad, List<ParsedUpdate> owners, String module, String what) {
        if (bad < 0) {
            return;
        }
        if (bad < owners.size()) {
            throw owners.get(bad).invalid(module, what + " holds NaN or infinity");
        }
        throw new ArithmeticException("module '" + module + "': the weighted sum of " + what
                + " overflows float32 (values times weights beyond 3.4e38)");
    }

    /** The client whose memory cannot be read any more, found by touching each tensor's ends. */
    private static ClientUpdate whichUnreadable(List<ParsedUpdate> parsed, Throwable fault) {
        for (ParsedUpdate p : parsed) {
            for (Tensor t : p.client.tensors().values()) {
                try {
                    long n = t.elementCount();
                    if (n > 0) {
                        t.get(0);
                        t.get(n - 1);
                    }
                } catch (RuntimeException | InternalError e) {
                    return p.client;
                }
            }
        }
        if (fault instanceof RuntimeException r) {
            throw r;
        }
        throw (Error) fault;
    }

    /** {@code out} with the keys of {@code order} first, in that order, then the rest. */
    static Map<String, Tensor> orderLike(Map<String, Tensor> out, Iterable<String> order) {
        Map<String, Tensor> ordered = new LinkedHashMap<>();
        for (String key : order) {
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
            PeftKeys.Key factor = PeftKeys.parse(key);
            if (factor == null) {
                out.put(key, t);
                continue;
            }
            if (t.rank() != 2) {
                throw new IllegalArgumentException("'" + key + "' is not a 2-D LoRA factor: " + t);
            }
            boolean isA = factor.factor() == Factor.A;
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
        ProductSpace ps = productSpace;
        if (ps != null) {
            ps.close();
        }
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
        private Split split = Split.FLEXLORA;
        private Kernels kernels;

        private Builder() {
        }

        /** Every setting of {@code policy}: strategy, global rank, missing modules, scale folding, split. */
        public Builder policy(Policy policy) {
            this.strategy = policy.strategy();
            this.globalRank = policy.globalRank();
            this.allowMissing = policy.allowMissing();
            this.foldScale = policy.foldScale();
            this.split = policy.split();
            return this;
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

        /**
         * How {@link Strategy#SVD} splits its factorisation into LoRA factors (default
         * {@link Split#FLEXLORA}); ignored (normalised to FLEXLORA, see {@link Policy}) for every
         * other strategy.
         */
        public Builder split(Split split) {
            this.split = Objects.requireNonNull(split, "split");
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
