package io.fedlora;

import io.fedlora.tensor.Tensor;

import io.fedlora.kernels.Accumulator;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A streaming aggregation round (DESIGN §2, "streaming and merging"). Each module keeps the
 * weighted sums {@code SA = sum p_k padZero(A_k)} and {@code SB}, the owner weights {@code P_i} and
 * the total {@code P}; adding a client is an axpy into them, two rounds merge by adding everything,
 * and {@link #finish} divides. Memory is one global adapter however many clients are added.
 *
 * <p>{@link #add} is safe from many threads at once and loses nothing. A client is checked
 * completely before any of its values touch the sums, so a refused client leaves the round exactly
 * as it was, and the caller may go on without it.
 */
public final class Round implements AutoCloseable {

    private final Aggregator aggregator;
    /** Guards the maps and counts below; the sums of a module are guarded by that module. */
    private final Object registry = new Object();
    private final Map<String, int[]> moduleShapes = new LinkedHashMap<>();
    private final Map<String, long[]> otherShapes = new LinkedHashMap<>();
    private final Map<String, ModuleSums> modules = new LinkedHashMap<>();
    private final Map<String, OtherSums> others = new LinkedHashMap<>();
    private final List<String> keyOrder = new ArrayList<>();
    private int clients;
    private boolean closed;

    Round(Aggregator aggregator) {
        this.aggregator = aggregator;
    }

    /** Clients added so far, merged rounds' clients included. */
    public int clientCount() {
        synchronized (registry) {
            return clients;
        }
    }

    /**
     * Checks {@code client} and adds it to the sums. Throws {@link InvalidUpdateException}, with the
     * round unchanged, when the client is unusable.
     */
    public void add(ClientUpdate client) {
        ParsedUpdate parsed = ParsedUpdate.parse(client, aggregator.strategy, aggregator.kernels, true);
        List<ModuleSums> targets = new ArrayList<>();
        List<OtherSums> otherTargets = new ArrayList<>();
        synchronized (registry) {
            ensureOpen();
            // Check every shape against the round before registering any, so a refusal changes nothing.
            Map<String, int[]> newShapes = new LinkedHashMap<>(moduleShapes);
            Map<String, long[]> newOtherShapes = new LinkedHashMap<>(otherShapes);
            for (ParsedUpdate.Module m : parsed.modules.values()) {
                Aggregator.checkModuleShape(newShapes, client.clientId(), m);
                aggregator.clientScale(client, m.name(), m.rank());
            }
            for (ParsedUpdate.Other o : parsed.others.values()) {
                Aggregator.checkOtherShape(newOtherShapes, client.clientId(), o);
            }
            moduleShapes.putAll(newShapes);
            otherShapes.putAll(newOtherShapes);
            for (ParsedUpdate.Module m : parsed.modules.values()) {
                targets.add(modules.computeIfAbsent(m.name(), name -> {
                    keyOrder.add(m.keyA());
                    keyOrder.add(m.keyB());
                    return new ModuleSums(m.keyA(), m.keyB(), m.inFeatures(), m.outFeatures());
                }));
            }
            for (ParsedUpdate.Other o : parsed.others.values()) {
                otherTargets.add(others.computeIfAbsent(o.key(), key -> {
                    keyOrder.add(key);
                    return new OtherSums(o.shape(), o.values().rows(), o.values().cols());
                }));
            }
            clients++;
        }
        int t = 0;
        for (ParsedUpdate.Module m : parsed.modules.values()) {
            double w = parsed.moduleWeight.get(m.name());
            targets.get(t++).add(m, w, w * aggregator.clientScale(client, m.name(), m.rank()));
        }
        t = 0;
        for (ParsedUpdate.Other o : parsed.others.values()) {
            otherTargets.get(t++).add(o.values(), client.weight());
        }
    }

    /**
     * Adds everything {@code other} holds into this round, as if its clients had been added here.
     * Both rounds must come from the same aggregator; {@code other} must not be changing meanwhile
     * and stays as it was.
     */
    public void merge(Round other) {
        if (other == this) {
            throw new IllegalArgumentException("cannot merge a round into itself");
        }
        if (other.aggregator != aggregator) {
            throw new IllegalArgumentException("rounds of different aggregators cannot be merged");
        }
        Map<String, ModuleSums> theirModules;
        Map<String, OtherSums> theirOthers;
        int theirClients;
        synchronized (other.registry) {
            theirModules = new LinkedHashMap<>(other.modules);
            theirOthers = new LinkedHashMap<>(other.others);
            theirClients = other.clients;
        }
        List<ModuleSums[]> pairs = new ArrayList<>();
        List<OtherSums[]> otherPairs = new ArrayList<>();
        synchronized (registry) {
            ensureOpen();
            for (Map.Entry<String, ModuleSums> e : theirModules.entrySet()) {
                int[] known = moduleShapes.get(e.getKey());
                ModuleSums theirs = e.getValue();
                if (known != null && (known[0] != theirs.inFeatures || known[1] != theirs.outFeatures)) {
                    throw new IllegalArgumentException("module '" + e.getKey() + "' has " + theirs.inFeatures + " x "
                            + theirs.outFeatures + " features in the merged round but " + known[0] + " x " + known[1] + " here");
                }
            }
            for (Map.Entry<String, OtherSums> e : theirOthers.entrySet()) {
                long[] known = otherShapes.get(e.getKey());
                if (known != null && !Arrays.equals(known, e.getValue().shape)) {
                    throw new IllegalArgumentException("tensor '" + e.getKey() + "' has shape "
                            + Arrays.toString(e.getValue().shape) + " in the merged round but "
                            + Arrays.toString(known) + " here");
                }
            }
            for (Map.Entry<String, ModuleSums> e : theirModules.entrySet()) {
                ModuleSums theirs = e.getValue();
                moduleShapes.putIfAbsent(e.getKey(), new int[] {theirs.inFeatures, theirs.outFeatures});
                pairs.add(new ModuleSums[] {modules.computeIfAbsent(e.getKey(), name -> {
                    keyOrder.add(theirs.keyA);
                    keyOrder.add(theirs.keyB);
                    return new ModuleSums(theirs.keyA, theirs.keyB, theirs.inFeatures, theirs.outFeatures);
                }), theirs});
            }
            for (Map.Entry<String, OtherSums> e : theirOthers.entrySet()) {
                OtherSums theirs = e.getValue();
                otherShapes.putIfAbsent(e.getKey(), theirs.shape);
                otherPairs.add(new OtherSums[] {others.computeIfAbsent(e.getKey(), key -> {
                    keyOrder.add(key);
                    return new OtherSums(theirs.shape, theirs.sums.rows(), theirs.sums.cols());
                }), theirs});
            }
            clients += theirClients;
        }
        for (ModuleSums[] pair : pairs) {
            pair[0].merge(pair[1]);
        }
        for (OtherSums[] pair : otherPairs) {
            pair[0].merge(pair[1]);
        }
    }

    /**
     * The global adapter from everything added so far, float32, keys in the order first seen. The
     * sums are kept, so a round can be finished, then continued and finished again.
     */
    public Map<String, Tensor> finish() {
        Map<String, ModuleSums> moduleSnapshot;
        Map<String, OtherSums> otherSnapshot;
        List<String> order;
        int total;
        synchronized (registry) {
            ensureOpen();
            if (clients == 0) {
                throw new IllegalStateException("the round has no clients to aggregate");
            }
            moduleSnapshot = new LinkedHashMap<>(modules);
            otherSnapshot = new LinkedHashMap<>(others);
            order = new ArrayList<>(keyOrder);
            total = clients;
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Map.Entry<String, ModuleSums> e : moduleSnapshot.entrySet()) {
            e.getValue().finish(e.getKey(), total, out);
        }
        for (Map.Entry<String, OtherSums> e : otherSnapshot.entrySet()) {
            e.getValue().finish(e.getKey(), total, out);
        }
        Map<String, Tensor> ordered = new LinkedHashMap<>();
        for (String key : order) {
            ordered.put(key, out.get(key));
        }
        return ordered;
    }

    // ---- partials that travel between servers ----------------------------------------------

    /** Key suffixes of the bookkeeping tensors in a partial; no PEFT key ends this way. */
    static final String OWNER_WEIGHT = ".fedlora_partial.owner_weight";
    static final String COUNTS = ".fedlora_partial.counts";
    static final String ROUND_KEY = "fedlora_partial.round";
    private static final int PARTIAL_FORMAT = 1;

    /**
     * This round's partial aggregate as plain tensors, so that another server can merge it (write
     * it with the safetensors writer, read it there, {@link Aggregator#roundFromPartial}): the raw
     * sums under the PEFT keys, and per module the owner weights and totals, each double kept as
     * a float32 pair (value, remainder) so nothing is lost on the way.
     */
    public Map<String, Tensor> toPartial() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        synchronized (registry) {
            ensureOpen();
            out.put(ROUND_KEY, Tensor.of(new float[] {PARTIAL_FORMAT, aggregator.strategy.ordinal(), clients}, 3));
            for (Map.Entry<String, ModuleSums> e : modules.entrySet()) {
                e.getValue().exportTo(e.getKey(), out);
            }
            for (Map.Entry<String, OtherSums> e : others.entrySet()) {
                e.getValue().exportTo(e.getKey(), out);
            }
        }
        return out;
    }

    /** Rebuilds a round from {@link #toPartial()}'s tensors; a malformed partial is refused whole. */
    static Round fromPartial(Aggregator aggregator, Map<String, Tensor> partial) {
        Tensor header = partial.get(ROUND_KEY);
        if (header == null || header.elementCount() != 3 || header.get(0) != PARTIAL_FORMAT) {
            throw new IllegalArgumentException("not a fedlora partial (no " + ROUND_KEY + " of format " + PARTIAL_FORMAT + ")");
        }
        Strategy strategy = Strategy.values()[Math.clamp((long) header.get(1), 0, Strategy.values().length - 1)];
        if (strategy != aggregator.strategy || header.get(1) != strategy.ordinal()) {
            throw new IllegalArgumentException("the partial was summed for " + strategy + ", this aggregator uses " + aggregator.strategy);
        }
        Round round = new Round(aggregator);
        try {
            for (Map.Entry<String, Tensor> e : partial.entrySet()) {
                String key = e.getKey();
                if (key.endsWith(OWNER_WEIGHT)) {
                    round.importModule(key.substring(0, key.length() - OWNER_WEIGHT.length()), partial);
                } else if (key.endsWith(COUNTS) && !partial.containsKey(
                        key.substring(0, key.length() - COUNTS.length()) + OWNER_WEIGHT)) {
                    round.importOther(key.substring(0, key.length() - COUNTS.length()), partial);
                }
            }
            round.clients = (int) header.get(2);
        } catch (RuntimeException e) {
            round.close();
            throw e;
        }
        return round;
    }

    private void importModule(String module, Map<String, Tensor> partial) {
        String keyA = null, keyB = null;
        for (String[] suffixes : ParsedUpdate.FACTOR_SUFFIXES) {
            if (partial.containsKey(module + suffixes[0])) {
                keyA = module + suffixes[0];
                keyB = module + suffixes[1];
            }
        }
        Tensor a = keyA == null ? null : partial.get(keyA), b = keyB == null ? null : partial.get(keyB);
        Tensor owner = partial.get(module + OWNER_WEIGHT), counts = partial.get(module + COUNTS);
        if (a == null || b == null || counts == null || a.rank() != 2 || b.rank() != 2 || a.dim(0) != b.dim(1)
                || owner.elementCount() != 2 * a.dim(0) || counts.elementCount() != 3) {
            throw new IllegalArgumentException("partial module '" + module + "' is incomplete or its shapes disagree");
        }
        int rank = (int) a.dim(0);
        if (aggregator.globalRank > 0 && rank != aggregator.globalRank) {
            throw new IllegalArgumentException("partial module '" + module + "' has rank " + rank
                    + " but this aggregator's global rank is " + aggregator.globalRank);
        }
        ModuleSums sums = new ModuleSums(keyA, keyB, (int) a.dim(1), (int) b.dim(0));
        modules.put(module, sums);
        moduleShapes.put(module, new int[] {sums.inFeatures, sums.outFeatures});
        keyOrder.add(keyA);
        keyOrder.add(keyB);
        sums.reserve(rank);
        sums.sumA.add(Matrix.dense(a.data(), a.dtype(), rank, sums.inFeatures), 1f);
        sums.sumB.add(Matrix.dense(b.data(), b.dtype(), sums.outFeatures, rank), 1f);
        for (int i = 0; i < rank; i++) {
            sums.ownerWeight[i] = (double) owner.get(i) + owner.get(rank + i);
        }
        sums.totalWeight = (double) counts.get(0) + counts.get(1);
        sums.clientCount = (int) counts.get(2);
    }

    private void importOther(String key, Map<String, Tensor> partial) {
        Tensor values = partial.get(key), counts = partial.get(key + COUNTS);
        if (values == null || counts.elementCount() != 3) {
            throw new IllegalArgumentException("partial tensor '" + key + "' is incomplete");
        }
        Matrix rows = ParsedUpdate.rowsOf(values);
        OtherSums sums = new OtherSums(values.shape(), rows.rows(), rows.cols());
        others.put(key, sums);
        otherShapes.put(key, values.shape());
        keyOrder.add(key);
        sums.sums.add(rows, 1f);
        sums.totalWeight = (double) counts.get(0) + counts.get(1);
        sums.clientCount = (int) counts.get(2);
    }

    /** A double as two floats whose sum is the double to about 48 bits. */
    private static float[] split(double value) {
        float high = (float) value;
        return new float[] {high, (float) (value - high)};
    }

    private static Tensor counts(double totalWeight, int clientCount) {
        float[] w = split(totalWeight);
        return Tensor.of(new float[] {w[0], w[1], clientCount}, 3);
    }

    /** Frees the sums (device memory on the CUDA backend). The round cannot be used afterwards. */
    @Override
    public void close() {
        synchronized (registry) {
            if (closed) {
                return;
            }
            closed = true;
            for (ModuleSums m : modules.values()) {
                m.close();
            }
            for (OtherSums o : others.values()) {
                o.close();
            }
        }
    }

    private void ensureOpen() {
        if (closed) {
            throw new IllegalStateException("the round is closed");
        }
    }

    /** The running sums of one LoRA module; every method holds the module's lock. */
    private final class ModuleSums {
        final String keyA, keyB;
        final int inFeatures, outFeatures;
        /** Components held: the fixed global rank, or the largest client rank so far. */
        int rank;
        Accumulator sumA, sumB;
        double[] ownerWeight = new double[0];
        double totalWeight;
        int clientCount;

        ModuleSums(String keyA, String keyB, int inFeatures, int outFeatures) {
            this.keyA = keyA;
            this.keyB = keyB;
            this.inFeatures = inFeatures;
            this.outFeatures = outFeatures;
        }

        synchronized void add(ParsedUpdate.Module m, double weightA, double weightB) {
            int kept = reserve(m.rank());
            float wa = (float) weightA;
            sumA.add(m.a().corner(kept, inFeatures), wa);
            sumB.add(m.b().corner(outFeatures, kept), (float) weightB);
            for (int i = 0; i < kept; i++) {
                ownerWeight[i] += wa;
            }
            totalWeight += wa;
            clientCount++;
        }

        /** Makes room for a client of rank {@code clientRank}; returns how many of its components are kept. */
        private int reserve(int clientRank) {
            int fixed = aggregator.globalRank;
            int wanted = fixed > 0 ? fixed : Math.max(rank, clientRank);
            if (sumA == null) {
                sumA = aggregator.kernels.newAccumulator(wanted, inFeatures);
                sumB = aggregator.kernels.newAccumulator(outFeatures, wanted);
            } else if (wanted > rank) {
                sumA.grow(wanted, inFeatures);
                sumB.grow(outFeatures, wanted);
            }
            if (wanted > rank) {
                ownerWeight = Arrays.copyOf(ownerWeight, wanted);
                rank = wanted;
            }
            return Math.min(clientRank, rank);
        }

        void merge(ModuleSums other) {
            // Lock order by identity so that two rounds merging into each other cannot deadlock.
            ModuleSums first = System.identityHashCode(this) <= System.identityHashCode(other) ? this : other;
            ModuleSums second = first == this ? other : this;
            synchronized (first) {
                synchronized (second) {
                    if (other.sumA == null) {
                        return;
                    }
                    reserve(other.rank);
                    sumA.add(other.sumA);
                    sumB.add(other.sumB);
                    for (int i = 0; i < other.rank; i++) {
                        ownerWeight[i] += other.ownerWeight[i];
                    }
                    totalWeight += other.totalWeight;
                    clientCount += other.clientCount;
                }
            }
        }

        synchronized void finish(String module, int roundClients, Map<String, Tensor> out) {
            aggregator.checkPresence(module, clientCount, roundClients);
            float[] scaleA = aggregator.componentScale(module, ownerWeight, totalWeight);
            float[] scaleB = aggregator.foldedScale(scaleA, module, rank);
            float[] a = new float[Math.multiplyExact(rank, inFeatures)];
            float[] b = new float[Math.multiplyExact(outFeatures, rank)];
            sumA.finish(a, scaleA, null);
            sumB.finish(b, null, scaleB);
            out.put(keyA, Tensor.of(a, rank, inFeatures));
            out.put(keyB, Tensor.of(b, outFeatures, rank));
        }

        synchronized void exportTo(String module, Map<String, Tensor> out) {
            float[] a = new float[Math.multiplyExact(rank, inFeatures)];
            float[] b = new float[Math.multiplyExact(outFeatures, rank)];
            float[] owner = new float[2 * rank];
            if (sumA != null) {
                sumA.finish(a, null, null); // scale 1: the raw sums
                sumB.finish(b, null, null);
            }
            for (int i = 0; i < rank; i++) {
                float[] w = split(ownerWeight[i]);
                owner[i] = w[0];
                owner[rank + i] = w[1];
            }
            out.put(keyA, Tensor.of(a, rank, inFeatures));
            out.put(keyB, Tensor.of(b, outFeatures, rank));
            out.put(module + OWNER_WEIGHT, Tensor.of(owner, 2, rank));
            out.put(module + COUNTS, counts(totalWeight, clientCount));
        }

        synchronized void close() {
            if (sumA != null) {
                sumA.close();
                sumB.close();
            }
        }
    }

    /** The running weighted sum of a tensor that is not a LoRA factor. */
    private final class OtherSums {
        final long[] shape;
        final Accumulator sums;
        double totalWeight;
        int clientCount;

        OtherSums(long[] shape, int rows, int cols) {
            this.shape = shape;
            this.sums = aggregator.kernels.newAccumulator(rows, cols);
        }

        synchronized void add(Matrix values, double weight) {
            float w = (float) weight;
            sums.add(values, w);
            totalWeight += w;
            clientCount++;
        }

        void merge(OtherSums other) {
            OtherSums first = System.identityHashCode(this) <= System.identityHashCode(other) ? this : other;
            OtherSums second = first == this ? other : this;
            synchronized (first) {
                synchronized (second) {
                    sums.add(other.sums);
                    totalWeight += other.totalWeight;
                    clientCount += other.clientCount;
                }
            }
        }

        synchronized void finish(String key, int roundClients, Map<String, Tensor> out) {
            aggregator.checkPresence(key, clientCount, roundClients);
            if (!(totalWeight > 0)) {
                throw new IllegalStateException("tensor '" + key + "': the clients' total weight is " + totalWeight);
            }
            float[] rowScale = new float[sums.rows()];
            Arrays.fill(rowScale, (float) (1.0 / totalWeight));
            float[] values = new float[Math.multiplyExact(sums.rows(), sums.cols())];
            sums.finish(values, rowScale, null);
            out.put(key, Tensor.of(values, shape));
        }

        synchronized void exportTo(String key, Map<String, Tensor> out) {
            float[] values = new float[Math.multiplyExact(sums.rows(), sums.cols())];
            sums.finish(values, null, null);
            out.put(key, Tensor.of(values, shape));
            out.put(key + COUNTS, counts(totalWeight, clientCount));
        }

        synchronized void close() {
            sums.close();
        }
    }
}
