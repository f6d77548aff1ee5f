package io.fedlora;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.product.ModuleFactors;
import io.fedlora.product.ProductSpace;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.lang.ref.Cleaner;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Supplier;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A streaming aggregation round (DESIGN §2, "streaming and merging"). Each module keeps the
 * weighted sums {@code SA = sum p_k padZero(A_k)} and {@code SB}, the owner weights {@code P_i} and
 * the total {@code P}; adding a client is an axpy into them, rounds and partials merge by adding
 * everything, and {@link #finish} divides. Memory is one global adapter however many clients
 * are added.
 *
 * <p>Thread-safe, and atomic: {@link #add}, {@link #merge} and {@link #mergePartial} against
 * {@link #finish}, {@link #toPartial} and {@link #close} see all of a client or none of it. A
 * client is parsed and its values screened (NaN, infinity, NORM's norm, a truncated file) before
 * the round's lock is taken, so adds from many threads overlap in that reading; the sums are
 * then updated under the lock by the backend's own threads. A client the round cannot take is
 * refused by {@code add} itself, and a client whose add fails for any reason once it started (an
 * I/O fault on a mapped file, an arena closed meanwhile) leaves the round bit for bit as it was:
 * such memory is summed only after the round has copied the sums it is about to change.
 *
 * <p><b>SVD and STACK</b> (DESIGN §9) cannot be summed: the output factors need the stacks
 * themselves ({@code U = Bs X}), and each new client's cross blocks {@code B_k^T B_j} need every
 * earlier client's factors. A round under these strategies therefore keeps, per module, each
 * client's factors (float32 copies owned by the round, so the caller may close a mapped input
 * right after {@code add}), its weight {@code p_k} and, when folding, its LoRA scale {@code s_k},
 * in client order; merging rounds or partials appends, and {@link #finish} runs the batch code on
 * them, so it gives the same bits as {@link Aggregator#aggregate} of the same clients in the same
 * order. <b>Memory bound</b>: the sum of the clients' factor sizes, {@code (m + n) * sum_k r_k * 4}
 * bytes per module ({@link #factorBytes()}; logged at {@code finish}), against one global adapter
 * for the factor-sum strategies. The Gram matrices and the SVD's working memory ({@code ~6 S^2}
 * doubles per module) are taken only while {@code finish} runs, outside the round's lock.
 */
public final class Round implements AutoCloseable {

    private static final Logger LOG = LoggerFactory.getLogger(Round.class);

    private static final AtomicLong IDS = new AtomicLong();

    /** Orders the locks of two rounds that merge, so that a.merge(b) and b.merge(a) cannot deadlock. */
    private final long id = IDS.incrementAndGet();
    private final Policy policy;
    private final Kernels kernels;
    private final ReentrantLock lock = new ReentrantLock();
    private final Shapes shapes;
    private final Map<String, ModuleSums> modules = new LinkedHashMap<>();
    private final Map<String, TensorSums> others = new LinkedHashMap<>();
    /** SVD, STACK: the kept client factors per module (then {@link #modules} stays empty). */
    private final Map<String, KeptFactors> products = new LinkedHashMap<>();
    private final boolean product;
    private final Supplier<ProductSpace> productSpace;
    private final LinkedHashSet<String> keyOrder = new LinkedHashSet<>();
    private long clients;
    private boolean closed;
    /** Every accumulator this round holds, so that close(), or the cleaner for a round dropped without it, frees them. */
    private final Held held = new Held();
    private final Cleaner.Cleanable cleanable;

    Round(Policy policy, Kernels kernels, Supplier<ProductSpace> productSpace) {
        this.policy = policy;
        this.kernels = kernels;
        this.product = policy.strategy().productSpace();
        this.productSpace = productSpace;
        this.shapes = new Shapes(policy.allowMissing());
        this.cleanable = CLEANER.register(this, held);
    }

    /**
     * The safety net for a round that an engine drops without closing (a task killed half-way, an
     * iterator never finished): once the round is unreachable, its accumulators are freed, so
     * device memory (the CUDA backend) does not leak for the life of the JVM. One daemon thread
     * for all rounds; {@link #close()} remains the way to free them at once.
     */
    private static final Cleaner CLEANER = Cleaner.create();

    /** The accumulators of one round; refers to nothing of the round, so that the round can become unreachable. */
    private static final class Held implements Runnable {
        private final Set<Accumulator> live = Collections.newSetFromMap(new IdentityHashMap<>());

        synchronized Accumulator track(Accumulator a) {
            live.add(a);
            return a;
        }

        synchronized void release(Accumulator a) {
            live.remove(a);
            a.close();
        }

        /** Frees what is left: called once, by close() or by the cleaner. */
        @Override
        public synchronized void run() {
            RuntimeException failure = null;
            for (Accumulator a : live) {
                try {
                    a.close();
                } catch (RuntimeException e) {
                    failure = failure == null ? e : failure;
                }
            }
            live.clear();
            if (failure != null) {
                throw failure;
            }
        }
    }

    public Policy policy() {
        return policy;
    }

    /** Clients added so far, merged rounds' and partials' clients included. */
    public long clientCount() {
        lock.lock();
        try {
            return clients;
        } finally {
            lock.unlock();
        }
    }

    /**
     * Checks {@code client} and adds it to the sums. Throws {@link InvalidUpdateException} naming
     * the client (and its file), with the round unchanged, when the client is unusable or its
     * data cannot be read; {@link IllegalStateException} when the round is closed.
     */
    public void add(ClientUpdate client) {
        ParsedUpdate parsed = ParsedUpdate.parse(client);
        Map<String, Double> weights = Screen.moduleWeights(parsed, policy.strategy(), kernels, true);
        // SVD, STACK: the round's own float32 copies, made before the lock is taken.
        Map<String, ModuleFactors> copies = product ? copies(parsed) : null;
        lock.lock();
        try {
            ensureOpen();
            shapes.check(parsed);
            List<Runnable> undo = new ArrayList<>();
            try {
                addLocked(parsed, weights, copies, undo);
            } catch (Throwable t) {
                for (int i = undo.size() - 1; i >= 0; i--) {
                    undo.get(i).run();
                }
                if (t instanceof Error e && !Screen.isReadFault(e)) {
                    throw e;
                }
                throw Screen.unreadable(client, t);
            }
            shapes.record(parsed);
            for (ParsedUpdate.Module m : parsed.modules.values()) {
                keyOrder.add(m.keyA());
                keyOrder.add(m.keyB());
            }
            keyOrder.addAll(parsed.others.keySet());
            clients++;
        } finally {
            lock.unlock();
        }
    }

    /** One client's modules as factors the round owns; a read fault names the client. */
    private Map<String, ModuleFactors> copies(ParsedUpdate parsed) {
        Map<String, ModuleFactors> out = new LinkedHashMap<>();
        try {
            for (ParsedUpdate.Module m : parsed.modules.values()) {
                out.put(m.name(), ProductModules.copy(parsed, m, policy));
            }
        } catch (InvalidUpdateException e) {
            throw e;
        } catch (RuntimeException | InternalError e) {
            throw Screen.unreadable(parsed.client, e);
        }
        return out;
    }

    /** Sums one screened client; every change it makes first registers how to take it back. */
    private void addLocked(ParsedUpdate parsed, Map<String, Double> weights, Map<String, ModuleFactors> copies,
            List<Runnable> undo) {
        // Every contribution (and so every refusal for weights out of range) before any change.
        List<Book.Contribution> contributions = new ArrayList<>();
        for (ParsedUpdate.Module m : copies != null ? List.<ParsedUpdate.Module>of() : parsed.modules.values()) {
            ModuleSums sums = modules.get(m.name());
            Book book = sums == null ? new Book(m.name(), policy, 0) : sums.book;
            contributions.add(book.contribution(parsed, m.rank(), weights.get(m.name()),
                    Book.clientScale(policy, parsed, m.name(), m.rank())));
        }
        List<Book.Contribution> otherContributions = new ArrayList<>();
        for (ParsedUpdate.Other o : parsed.others.values()) {
            TensorSums sums = others.get(o.key());
            Book book = sums == null ? new Book(o.key(), policy, 0) : sums.book;
            otherContributions.add(book.contribution(parsed, 0, parsed.client.weight(), 1));
        }
        int c = 0;
        if (copies != null) {
            for (ParsedUpdate.Module m : parsed.modules.values()) {
                keptFor(m.name(), m.keyA(), m.keyB(), m.inFeatures(), m.outFeatures(), undo).append(copies.get(m.name()), undo);
            }
        }
        for (ParsedUpdate.Module m : copies != null ? List.<ParsedUpdate.Module>of() : parsed.modules.values()) {
            ModuleSums sums = modules.get(m.name());
            if (sums == null) {
                ModuleSums created = new ModuleSums(m.name(), m.keyA(), m.keyB(), m.inFeatures(), m.outFeatures());
                undo.add(() -> {
                    modules.remove(m.name());
                    created.close();
                });
                modules.put(m.name(), created);
                sums = created;
            } else {
                undo.add(sums.checkpoint(parsed.faultable));
            }
            sums.add(m, weights.get(m.name()), contributions.get(c++));
        }
        c = 0;
        for (ParsedUpdate.Other o : parsed.others.values()) {
            TensorSums sums = others.get(o.key());
            if (sums == null) {
                TensorSums created = new TensorSums(o.key(), o.shape(), o.values().rows(), o.values().cols());
                undo.add(() -> {
                    others.remove(o.key());
                    created.close();
                });
                others.put(o.key(), created);
                sums = created;
            } else {
                undo.add(sums.checkpoint(parsed.faultable));
            }
            sums.add(o.values(), parsed.client.weight(), otherContributions.get(c++));
        }
    }

    /**
     * Adds everything {@code other} holds into this round, as if its clients had been added here.
     * The policies must be equal (the rounds may come from different aggregators, even backends);
     * {@code other} stays as it was. Atomic on both rounds.
     */
    public void merge(Round other) {
        if (other == this) {
            throw new IllegalArgumentException("cannot merge a round into itself");
        }
        checkPolicy(other.policy, "the merged round");
        Round first = id < other.id ? this : other, second = first == this ? other : this;
        first.lock.lock();
        try {
            second.lock.lock();
            try {
                ensureOpen();
                if (other.closed) {
                    throw new IllegalStateException("the round being merged is closed");
                }
                shapes.checkMerge(other.shapes.modules, other.shapes.others, "the merged round");
                // Their factors are shared, not copied: no round writes a kept factor after copying it.
                List<Runnable> steps = new ArrayList<>();
                for (KeptFactors theirs : other.products.values()) {
                    List<ModuleFactors> clientsOfTheirs = List.copyOf(theirs.clients);
                    steps.add(() -> keptFor(theirs.name, theirs.keyA, theirs.keyB, theirs.inFeatures, theirs.outFeatures, null)
                            .appendAll(clientsOfTheirs));
                }
                for (ModuleSums theirs : other.modules.values()) {
                    ModuleSums mine = modules.get(theirs.book.name);
                    float factor = mine == null ? 1f : mine.book.mergeFactor(theirs.book.exponent, theirs.book.totalWeight);
                    steps.add(() -> moduleFor(theirs.book.name, theirs.keyA, theirs.keyB, theirs.inFeatures, theirs.outFeatures)
                            .merge(theirs, factor, other.kernels == kernels));
                }
                for (TensorSums theirs : other.others.values()) {
                    TensorSums mine = others.get(theirs.book.name);
                    float factor = mine == null ? 1f : mine.book.mergeFactor(theirs.book.exponent, theirs.book.totalWeight);
                    steps.add(() -> tensorFor(theirs.book.name, theirs.shape, theirs.sums.rows(), theirs.sums.cols())
                            .merge(theirs, factor, other.kernels == kernels));
                }
                steps.forEach(Runnable::run);
                shapes.recordMerge(other.shapes.modules, other.shapes.others, "the merged round");
                keyOrder.addAll(other.keyOrder);
                clients += other.clients;
            } finally {
                second.lock.unlock();
            }
        } finally {
            first.lock.unlock();
        }
    }

    /**
     * Adds a partial aggregate (from {@link #toPartial()} here or on another server) into this
     * round, reading its sums in place. The policies must be equal.
     */
    public void mergePartial(Partial partial) {
        checkPolicy(partial.policy(), "the partial");
        Map<String, int[]> theirModules = new LinkedHashMap<>();
        partial.modules.forEach((name, m) -> theirModules.put(name, new int[] {m.inFeatures(), m.outFeatures()}));
        partial.factors.forEach((name, f) -> theirModules.put(name, new int[] {f.inFeatures(), f.outFeatures()}));
        // SVD, STACK: the round's own copies of the partial's factors (it may be a view of a mapped file).
        Map<String, List<ModuleFactors>> imported = new LinkedHashMap<>();
        partial.factors.forEach((name, f) -> imported.put(name, importFactors(f)));
        Map<String, long[]> theirOthers = new LinkedHashMap<>();
        partial.others.forEach((key, t) -> theirOthers.put(key, t.shape()));
        lock.lock();
        try {
            ensureOpen();
            shapes.checkMerge(theirModules, theirOthers, "the partial");
            List<Runnable> steps = new ArrayList<>();
            for (Partial.FactorPart f : partial.factors.values()) {
                steps.add(() -> keptFor(f.module(), f.keyA(), f.keyB(), f.inFeatures(), f.outFeatures(), null)
                        .appendAll(imported.get(f.module())));
            }
            for (Partial.ModulePart p : partial.modules.values()) {
                ModuleSums mine = modules.get(p.module());
                float factor = mine == null ? 1f : mine.book.mergeFactor(p.exponent(), p.totalWeight());
                steps.add(() -> moduleFor(p.module(), p.keyA(), p.keyB(), p.inFeatures(), p.outFeatures()).merge(p, factor));
            }
            for (Partial.TensorPart p : partial.others.values()) {
                TensorSums mine = others.get(p.key());
                float factor = mine == null ? 1f : mine.book.mergeFactor(p.exponent(), p.totalWeight());
                Matrix rows = ParsedUpdate.rowsOf(p.sums());
                steps.add(() -> tensorFor(p.key(), p.shape(), rows.rows(), rows.cols()).merge(p, rows, factor));
            }
            steps.forEach(Runnable::run);
            shapes.recordMerge(theirModules, theirOthers, "the partial");
            keyOrder.addAll(partial.keyOrder);
            clients += partial.clientCount();
        } finally {
            lock.unlock();
        }
    }

    private void checkPolicy(Policy theirs, String what) {
        if (!policy.equals(theirs)) {
            throw new IllegalArgumentException(what + " was summed under " + theirs + ", this round under " + policy
                    + "; only rounds of equal policies merge");
        }
    }

    /** The kept factors of {@code name}, created when new (and, with {@code undo}, removed again by it). */
    private KeptFactors keptFor(String name, String keyA, String keyB, int in, int out, List<Runnable> undo) {
        KeptFactors kept = products.get(name);
        if (kept == null) {
            kept = new KeptFactors(name, keyA, keyB, in, out);
            products.put(name, kept);
            if (undo != null) {
                undo.add(() -> products.remove(name));
            }
        }
        return kept;
    }

    private ModuleSums moduleFor(String name, String keyA, String keyB, int in, int out) {
        return modules.computeIfAbsent(name, n -> new ModuleSums(n, keyA, keyB, in, out));
    }

    private TensorSums tensorFor(String key, long[] shape, int rows, int cols) {
        return others.computeIfAbsent(key, k -> new TensorSums(k, shape, rows, cols));
    }

    /**
     * The global adapter from everything added so far, float32, keys in the order first seen. The
     * sums are kept, so a round can be finished, then continued and finished again. SVD and STACK
     * factorise a consistent snapshot of the kept factors outside the round's lock (adds and
     * merges go on meanwhile; they are not in this result), by the batch code: same bits as
     * {@link Aggregator#aggregate} of the same clients in the same order.
     */
    public Map<String, Tensor> finish() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        Map<String, List<ModuleFactors>> snapshot = new LinkedHashMap<>();
        List<KeptFactors> kept;
        List<String> order;
        long count, bytes;
        lock.lock();
        try {
            ensureOpen();
            if (clients == 0) {
                throw new IllegalStateException("the round has no clients to aggregate");
            }
            for (ModuleSums m : modules.values()) {
                m.finish(out);
            }
            kept = new ArrayList<>(products.values());
            for (KeptFactors k : kept) {
                snapshot.put(k.name, List.copyOf(k.clients));
            }
            for (TensorSums t : others.values()) {
                t.finish(out);
            }
            order = new ArrayList<>(keyOrder);
            count = clients;
            bytes = factorBytesLocked();
        } finally {
            lock.unlock();
        }
        if (product) {
            LOG.info("{} round: finishing {} clients from the factors it keeps, {} bytes ({} MiB; (m + n) * sum r_k * 4"
                    + " per module, {} modules)", policy.strategy().cliName(), count, bytes,
                    String.format(java.util.Locale.ROOT, "%.1f", bytes / 1048576.0), kept.size());
            ProductSpace space = productSpace.get();
            for (KeptFactors k : kept) {
                ProductModules.aggregate(k.name, k.keyA, k.keyB, snapshot.get(k.name), policy, space, out);
            }
        }
        return Aggregator.orderLike(out, order);
    }

    /**
     * Bytes of client factors this round keeps: under SVD and STACK, the sum over modules of
     * {@code (m + n) * sum_k r_k * 4} (the memory bound of such a round); 0 under the factor-sum
     * strategies, which keep one global adapter's sums whatever the client count.
     */
    public long factorBytes() {
        lock.lock();
        try {
            return factorBytesLocked();
        } finally {
            lock.unlock();
        }
    }

    private long factorBytesLocked() {
        long bytes = 0;
        for (KeptFactors k : products.values()) {
            bytes += k.bytes();
        }
        return bytes;
    }

    /**
     * A consistent snapshot of this round as a {@link Partial}, to merge elsewhere or to send to
     * another server. The round goes on unchanged.
     */
    public Partial toPartial() {
        lock.lock();
        try {
            ensureOpen();
            Map<String, Partial.ModulePart> parts = new LinkedHashMap<>();
            for (ModuleSums m : modules.values()) {
                parts.put(m.book.name, m.export());
            }
            Map<String, Partial.FactorPart> factorParts = new LinkedHashMap<>();
            for (KeptFactors k : products.values()) {
                factorParts.put(k.name, k.export());
            }
            Map<String, Partial.TensorPart> tensorParts = new LinkedHashMap<>();
            for (TensorSums t : others.values()) {
                tensorParts.put(t.book.name, t.export());
            }
            return new Partial(policy, clients, parts, factorParts, tensorParts, new ArrayList<>(keyOrder));
        } finally {
            lock.unlock();
        }
    }

    /** Frees the sums (device memory on the CUDA backend). Idempotent; the round cannot be used afterwards. */
    @Override
    public void close() {
        lock.lock();
        try {
            if (closed) {
                return;
            }
            closed = true;
            try {
                modules.values().forEach(ModuleSums::close);
                others.values().forEach(TensorSums::close);
                products.clear();
            } finally {
                cleanable.clean(); // anything left, and the cleaner's registration
            }
        } finally {
            lock.unlock();
        }
    }

    private void ensureOpen() {
        if (closed) {
            throw new IllegalStateException("the round is closed");
        }
    }

    private static float[] raw(Accumulator sums) {
        float[] values = new float[Math.multiplyExact(sums.rows(), sums.cols())];
        sums.finish(values, null, null); // scale 1: the raw sums
        return values;
    }

    private float[] checkedFinish(Accumulator sums, float[] rowScale, float[] colScale, String name, String what) {
        float[] values = new float[Math.multiplyExact(sums.rows(), sums.cols())];
        sums.finish(values, rowScale, colScale);
        if (!kernels.allFinite(Matrix.of(values, sums.rows(), sums.cols()))) {
            throw new ArithmeticException("'" + name + "': the weighted sum of " + what
                    + " overflowed float32 (values times weights beyond 3.4e38)");
        }
        return values;
    }

    /** A product-space partial's factors as the round's own per-client copies, in client order. */
    private static List<ModuleFactors> importFactors(Partial.FactorPart f) {
        int n = f.inFeatures(), m = f.outFeatures(), s = f.stackRank();
        float[] stackA = f.stackA().toFloatArray(), stackB = f.stackB().toFloatArray();
        List<ModuleFactors> out = new ArrayList<>(f.ranks().length);
        int offset = 0;
        for (int c = 0; c < f.ranks().length; c++) {
            int r = f.ranks()[c];
            float[] a = java.util.Arrays.copyOfRange(stackA, offset * n, (offset + r) * n);
            float[] b = new float[Math.multiplyExact(m, r)];
            for (int row = 0; row < m; row++) {
                System.arraycopy(stackB, row * s + offset, b, row * r, r);
            }
            out.add(new ModuleFactors(f.clientIds().get(c), Matrix.of(a, r, n), Matrix.of(b, m, r), f.weights()[c],
                    f.scales()[c]));
            offset += r;
        }
        return out;
    }

    /**
     * SVD, STACK: one module's clients as the round keeps them, in client order: float32 factors
     * (heap copies, never written after they were made, so merged rounds may share them), weight
     * and LoRA scale. Used under the round's lock.
     */
    private static final class KeptFactors {
        final String name, keyA, keyB;
        final int inFeatures, outFeatures;
        final List<ModuleFactors> clients = new ArrayList<>();
        /** {@code S = sum r_k}. */
        int stackRank;

        KeptFactors(String name, String keyA, String keyB, int inFeatures, int outFeatures) {
            this.name = name;
            this.keyA = keyA;
            this.keyB = keyB;
            this.inFeatures = inFeatures;
            this.outFeatures = outFeatures;
        }

        void append(ModuleFactors f, List<Runnable> undo) {
            int size = clients.size(), rank = stackRank;
            int grown = Math.addExact(stackRank, f.rank());
            undo.add(() -> {
                clients.subList(size, clients.size()).clear();
                stackRank = rank;
            });
            clients.add(f);
            stackRank = grown;
        }

        void appendAll(List<ModuleFactors> more) {
            int grown = stackRank;
            for (ModuleFactors f : more) {
                grown = Math.addExact(grown, f.rank());
            }
            clients.addAll(more);
            stackRank = grown;
        }

        long bytes() {
            return 4L * stackRank * ((long) inFeatures + outFeatures);
        }

        /** The clients' factors stacked in client order: {@code [A_1; ...; A_K]} and {@code [B_1 ... B_K]}. */
        Partial.FactorPart export() {
            int n = inFeatures, m = outFeatures, s = stackRank, k = clients.size();
            float[] stackA = new float[Math.multiplyExact(s, n)];
            float[] stackB = new float[Math.multiplyExact(m, s)];
            List<String> ids = new ArrayList<>(k);
            double[] weights = new double[k], scales = new double[k];
            int[] ranks = new int[k];
            int offset = 0;
            for (int c = 0; c < k; c++) {
                ModuleFactors f = clients.get(c);
                int r = f.rank();
                System.arraycopy(ProductModules.heap(f.a()), 0, stackA, offset * n, r * n);
                float[] b = ProductModules.heap(f.b());
                for (int row = 0; row < m; row++) {
                    System.arraycopy(b, row * r, stackB, row * s + offset, r);
                }
                ids.add(f.clientId());
                weights[c] = f.weight();
                scales[c] = f.scale();
                ranks[c] = r;
                offset += r;
            }
            return new Partial.FactorPart(name, keyA, keyB, n, m, Tensor.of(stackA, s, n), Tensor.of(stackB, m, s),
                    List.copyOf(ids), weights, scales, ranks);
        }
    }

    /** The running sums of one LoRA module; used under the round's lock. */
    private final class ModuleSums {
        final String keyA, keyB;
        final int inFeatures, outFeatures;
        final Book book;
        Accumulator sumA, sumB;

        ModuleSums(String name, String keyA, String keyB, int inFeatures, int outFeatures) {
            this.keyA = keyA;
            this.keyB = keyB;
            this.inFeatures = inFeatures;
            this.outFeatures = outFeatures;
            this.book = new Book(name, policy, 0);
        }

        /** Makes room for {@code rank} components; new cells are zero. */
        void reserve(int rank) {
            if (sumA == null) {
                sumA = held.track(kernels.newAccumulator(rank, inFeatures));
                try {
                    sumB = held.track(kernels.newAccumulator(outFeatures, rank));
                } catch (RuntimeException | Error e) {
                    held.release(sumA);
                    sumA = null;
                    throw e;
                }
            } else if (rank > book.rank) {
                sumA.grow(rank, inFeatures);
                sumB.grow(outFeatures, rank);
            }
            book.grow(rank);
        }

        void add(ParsedUpdate.Module m, double weight, Book.Contribution c) {
            reserve(book.rankFor(m.rank()));
            sumA.add(m.a().corner(c.kept(), inFeatures), c.weightA());
            sumB.add(m.b().corner(outFeatures, c.kept()), c.weightB());
            book.record(weight, c);
        }

        /**
         * How to take back the next change: restore the bookkeeping and, when the sums may be
         * left half-updated (memory that can fault), a copy of the sums taken now.
         */
        Runnable checkpoint(boolean copySums) {
            Book saved = book.copy();
            float[] a = copySums && sumA != null ? raw(sumA) : null;
            float[] b = copySums && sumB != null ? raw(sumB) : null;
            return () -> {
                if (a != null) {
                    Accumulator newA = held.track(kernels.newAccumulator(saved.rank, inFeatures));
                    Accumulator newB = held.track(kernels.newAccumulator(outFeatures, saved.rank));
                    // fma(1, x, +0) = x: the copy goes back bit for bit (sums are never -0).
                    newA.add(Matrix.of(a, saved.rank, inFeatures), 1f);
                    newB.add(Matrix.of(b, outFeatures, saved.rank), 1f);
                    held.release(sumA);
                    held.release(sumB);
                    sumA = newA;
                    sumB = newB;
                }
                book.restore(saved);
            };
        }

        void merge(ModuleSums theirs, float factor, boolean sameBackend) {
            reserve(Math.max(book.rank, theirs.book.rank));
            if (factor == 1f && sameBackend) {
                sumA.add(theirs.sumA);
                sumB.add(theirs.sumB);
            } else {
                sumA.add(Matrix.of(raw(theirs.sumA), theirs.book.rank, inFeatures), factor);
                sumB.add(Matrix.of(raw(theirs.sumB), outFeatures, theirs.book.rank), factor);
            }
            book.merge(theirs.book, factor);
        }

        void merge(Partial.ModulePart p, float factor) {
            reserve(Math.max(book.rank, p.rank()));
            sumA.add(Matrix.dense(p.sumA().data(), DType.F32, p.rank(), inFeatures), factor);
            sumB.add(Matrix.dense(p.sumB().data(), DType.F32, outFeatures, p.rank()), factor);
            book.merge(p.ownerWeight(), p.totalWeight(), p.clients(), p.exponent(), factor);
        }

        void finish(Map<String, Tensor> out) {
            float[] scaleA = book.scaleA();
            float[] scaleB = book.scaleB(scaleA);
            out.put(keyA, Tensor.of(checkedFinish(sumA, scaleA, null, book.name, "lora_A"), book.rank, inFeatures));
            out.put(keyB, Tensor.of(checkedFinish(sumB, null, scaleB, book.name, "lora_B"), outFeatures, book.rank));
        }

        Partial.ModulePart export() {
            return new Partial.ModulePart(book.name, keyA, keyB, inFeatures, outFeatures, book.rank,
                    Tensor.of(raw(sumA), book.rank, inFeatures), Tensor.of(raw(sumB), outFeatures, book.rank),
                    book.ownerWeight.clone(), book.totalWeight, book.clients, book.exponent);
        }

        void close() {
            if (sumA != null) {
                held.release(sumA);
                held.release(sumB);
            }
        }
    }

    /** The running weighted sum of a tensor that is not a LoRA factor. */
    private final class TensorSums {
        final long[] shape;
        final Book book;
        Accumulator sums;

        TensorSums(String key, long[] shape, int rows, int cols) {
            this.shape = shape.clone();
            this.book = new Book(key, policy, 0);
            this.sums = held.track(kernels.newAccumulator(rows, cols));
        }

        void add(Matrix values, double weight, Book.Contribution c) {
            sums.add(values, c.weightA());
            book.record(weight, c);
        }

        Runnable checkpoint(boolean copySums) {
            Book saved = book.copy();
            float[] values = copySums ? raw(sums) : null;
            return () -> {
                if (values != null) {
                    Accumulator restored = held.track(kernels.newAccumulator(sums.rows(), sums.cols()));
                    restored.add(Matrix.of(values, sums.rows(), sums.cols()), 1f);
                    held.release(sums);
                    sums = restored;
                }
                book.restore(saved);
            };
        }

        void merge(TensorSums theirs, float factor, boolean sameBackend) {
            if (factor == 1f && sameBackend) {
                sums.add(theirs.sums);
            } else {
                sums.add(Matrix.of(raw(theirs.sums), sums.rows(), sums.cols()), factor);
            }
            book.merge(theirs.book, factor);
        }

        void merge(Partial.TensorPart p, Matrix rows, float factor) {
            sums.add(rows, factor);
            book.merge(new double[0], p.totalWeight(), p.clients(), p.exponent(), factor);
        }

        void finish(Map<String, Tensor> out) {
            float[] rowScale = new float[sums.rows()];
            java.util.Arrays.fill(rowScale, book.inverseTotal());
            out.put(book.name, Tensor.of(checkedFinish(sums, rowScale, null, book.name, "the tensor"), shape));
        }

        Partial.TensorPart export() {
            return new Partial.TensorPart(book.name, shape, Tensor.of(raw(sums), shape), book.totalWeight, book.clients,
                    book.exponent);
        }

        void close() {
            held.release(sums);
        }
    }
}
