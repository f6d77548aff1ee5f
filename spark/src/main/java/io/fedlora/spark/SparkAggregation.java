package io.fedlora.spark;

import io.fedlora.io.OutputConfig;

import io.fedlora.Aggregator;
import io.fedlora.InvalidUpdateException;
import io.fedlora.Round;
import io.fedlora.Partial;
import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;

/**
 * Hierarchical aggregation on Spark (DESIGN §10): a manifest of clients is split into partitions;
 * each map task reads its clients into one {@link Round} and returns the round's partial
 * aggregate as bytes, with the clients it could not use; partials are combined by
 * {@code treeReduce} (a merge is an addition), and the driver finishes the one that is left and
 * writes the global adapter. Memory per task and per merge is one global adapter, whatever the
 * number of clients.
 *
 * <p>SVD and STACK (DESIGN §9) cannot be summed: their partials carry every client's float32
 * factors ({@code (m + n) * sum r_k * 4} bytes per module), so the partials grow up the tree and
 * the driver holds all clients' factors before it factorises them once. The tree reduction merges
 * partials in an order of its own, so the driver puts the clients back in manifest order
 * ({@link Partial#inClientOrder}) and gets what {@code fedlora aggregate} gets from the clients in
 * that order.
 *
 * <p>A bad client (unreadable, malformed, refused by the aggregator, or disagreeing with the first
 * readable client) is reported by name and left out; it never fails the job. Map tasks have no
 * side effects: a retried task recomputes its partial from its clients and Spark keeps one
 * result per partition, so nothing is counted twice.
 */
public final class SparkAggregation {

    /** A local property that makes each map task fail once, after its work, to exercise retries (tests only). */
    static final String FAIL_FIRST_ATTEMPT = "fedlora.test.failFirstAttempt";

    private SparkAggregation() {
    }

    /**
     * What decides the job: the aggregation's policy (with {@code fold}, its fold scale comes from
     * the base client's config, as {@code fedlora aggregate} takes the first client's), the
     * executors' backend, the partitioning.
     *
     * @param fold        fold each client's LoRA scale into B ({@code --scale fold})
     * @param backend     the executors' backend ("vector" unless told otherwise; "auto", "cuda", "scalar")
     * @param threads     CPU threads per task (1: Spark already runs one task per core)
     * @param partitions  map tasks (0: twice Spark's default parallelism, at most one per client)
     * @param depth       depth of the tree reduction
     * @param dtype       element type of the output (null: float32)
     * @param heapLocal   read local clients into the heap instead of mapping them
     * @param force       replace an existing adapter directory at the output
     */
    public record Options(Policy policy, boolean fold, String backend, int threads, int partitions, int depth,
            DType dtype, boolean heapLocal, boolean force) implements Serializable {

        public Options {
            Objects.requireNonNull(policy, "policy");
            Objects.requireNonNull(backend, "backend");
            if (threads < 1 || partitions < 0 || depth < 1) {
                throw new IllegalArgumentException("threads >= 1, partitions >= 0 and depth >= 1, got "
                        + threads + ", " + partitions + ", " + depth);
            }
        }

        public static Options of(Policy policy) {
            return new Options(policy, false, "vector", 1, 0, 2, null, false, false);
        }

        public Options withFold(boolean scaleFold) {
            return new Options(policy, scaleFold, backend, threads, partitions, depth, dtype, heapLocal, force);
        }

        public Options withBackend(String name, int threadsPerTask) {
            return new Options(policy, fold, name, threadsPerTask, partitions, depth, dtype, heapLocal, force);
        }

        public Options withPartitions(int count) {
            return new Options(policy, fold, backend, threads, count, depth, dtype, heapLocal, force);
        }

        public Options withDtype(DType type) {
            return new Options(policy, fold, backend, threads, partitions, depth, type, heapLocal, force);
        }

        public Options withHeapLocal(boolean heap) {
            return new Options(policy, fold, backend, threads, partitions, depth, dtype, heap, force);
        }

        public Options withForce(boolean replace) {
            return new Options(policy, fold, backend, threads, partitions, depth, dtype, heapLocal, replace);
        }
    }

    /**
     * What the tasks need: the policy every task's aggregator is built with (equal policies, so
     * their partials merge), the executors' backend, and the base client's tensors to check clients against.
     */
    record Spec(Policy policy, String backend, int threads, Schema schema, Map<String, String> hadoopSettings,
            boolean heapLocal) implements Serializable {

        Aggregator newAggregator() {
            return Aggregator.builder().policy(policy).backend(backend).threads(threads).build();
        }
    }

    /**
     * What the job did.
     *
     * @param partialBytes size of the final partial (one global adapter's sums and bookkeeping)
     * @param setupNanos   driver: manifest and base client
     * @param jobNanos     driver: the Spark job, map tasks and tree reduction
     * @param finishNanos  driver: decoding the last partial and dividing
     * @param writeNanos   driver: writing the output directory
     */
    public record Result(Path output, long clients, List<BadClient> bad, int globalRank, long bytesRead,
            long partialBytes, int partitions, TaskResult totals, List<String> notes, long setupNanos, long jobNanos,
            long finishNanos, long writeNanos) {
    }

    /**
     * Runs the job on {@code spark}'s cluster and writes the global adapter to {@code output}
     * (atomically: a failed job leaves nothing there).
     *
     * @throws IllegalArgumentException when no client of the manifest can be used
     */
    public static Result run(JavaSparkContext spark, Manifest manifest, Options options, Path output) throws IOException {
        long start = System.nanoTime();
        Map<String, String> hadoopSettings = new LinkedHashMap<>();
        for (scala.Tuple2<String, String> setting : spark.getConf().getAllWithPrefix("spark.hadoop.")) {
            hadoopSettings.put(setting._1(), setting._2());
        }
        Base base = base(manifest, options, new ClientFiles(hadoopSettings, options.heapLocal()));
        Spec spec = new Spec(base.policy, options.backend(), options.threads(), base.schema, hadoopSettings,
                options.heapLocal());
        List<Manifest.Entry> clients = manifest.clients();
        int partitions = options.partitions() > 0 ? options.partitions() : 2 * spark.defaultParallelism();
        partitions = Math.max(1, Math.min(partitions, clients.size()));
        long setup = System.nanoTime();

        JavaRDD<Manifest.Entry> rdd = spark.parallelize(clients, partitions);
        TaskResult total = rdd.mapPartitions(entries -> List.of(aggregatePartition(spec, entries)).iterator())
                .treeReduce((x, y) -> combine(spec, x, y), options.depth());
        long job = System.nanoTime();

        List<BadClient> bad = new ArrayList<>(manifest.bad());
        bad.addAll(total.bad());
        if (total.partial() == null) {
            throw new IllegalArgumentException("no client of the manifest could be used (" + bad.size() + " bad"
                    + (bad.isEmpty() ? "" : "; first: " + bad.get(0)) + ")");
        }
        Map<String, Tensor> global;
        // SVD, STACK: the clients back in manifest order (treeReduce merges in an order of its own).
        Partial last = Partial.fromBytes(MemorySegment.ofArray(total.partial()))
                .inClientOrder(clients.stream().map(Manifest.Entry::clientId).toList());
        try (Aggregator aggregator = spec.newAggregator(); Round round = aggregator.roundFromPartial(last)) {
            global = orderLike(base.schema.keys(), round.finish());
        }
        long finished = System.nanoTime();
        Map<String, Integer> outRanks = PeftAdapter.moduleRanks(global);
        int globalRank = base.policy.globalRank() > 0 ? base.policy.globalRank()
                : outRanks.values().stream().mapToInt(Integer::intValue).max().orElse(1);
        List<String> notes = new ArrayList<>();
        if (base.policy.strategy() == Strategy.NORM && clients.stream().anyMatch(c -> c.weight() != 1)) {
            notes.add("--strategy norm weights each client by ||B A||_F; the manifest's weights are not used");
        }
        AdapterConfig config = total.configs().config(base.config, base.policy.foldScale(), globalRank, outRanks, notes);
        PeftAdapter.write(output, output.toString(), options.force(), global, options.dtype(), config, base.metadata);
        long written = System.nanoTime();
        return new Result(output, total.clients(), List.copyOf(bad), globalRank, total.bytesRead(),
                total.partial().length, partitions, total, List.copyOf(notes), setup - start, job - setup,
                finished - job, written - finished);
    }

    /** The base client: its tensors' shapes, its config and metadata, and the job's policy (with its fold scale). */
    private record Base(Schema schema, AdapterConfig config, Map<String, String> metadata, Policy policy) {
    }

    /**
     * The first client of the manifest that opens and that a round accepts: its tensors are the
     * schema, its config and metadata the output's and, with {@code fold}, its LoRA scale the
     * global one, as the first client's are for {@code fedlora aggregate}.
     */
    private static Base base(Manifest manifest, Options options, ClientFiles files) {
        BadClient first = manifest.bad().isEmpty() ? null : manifest.bad().get(0);
        for (Manifest.Entry entry : manifest.clients()) {
            try (PeftAdapter adapter = files.open(entry.location())) {
                if (options.fold() && adapter.config() == null) {
                    continue; // its task reports it: folding needs lora_alpha
                }
                Policy policy = options.fold() ? options.policy().withFoldScale(adapter.config().scale()) : options.policy();
                try (Aggregator check = Aggregator.builder().policy(policy).backend("scalar").threads(1).build();
                        Round round = check.newRound()) {
                    round.add(adapter.toUpdate(entry.clientId(), policy.strategy() == Strategy.NORM ? 1 : entry.weight()));
                }
                return new Base(Schema.of(entry.clientId(), adapter.tensors()), adapter.config(),
                        new LinkedHashMap<>(adapter.metadata()), policy);
            } catch (IOException | UncheckedIOException | IllegalArgumentException e) {
                // The map task that owns this client reports it; the next one may serve as base.
                if (first == null) {
                    first = new BadClient(entry.clientId(), entry.location(), reason(e, entry.clientId()));
                }
            }
        }
        throw new IllegalArgumentException("no client of the manifest can be used ("
                + (manifest.clients().size() + manifest.bad().size()) + " listed"
                + (first == null ? "" : "; first: " + first) + ")");
    }

    /** One map task: its clients into one round, the round out as partial bytes. */
    static TaskResult aggregatePartition(Spec spec, Iterator<Manifest.Entry> entries) {
        long start = System.nanoTime();
        boolean allowMissing = spec.policy().allowMissing(), fold = spec.policy().folds();
        boolean norm = spec.policy().strategy() == Strategy.NORM;
        List<BadClient> bad = new ArrayList<>();
        OutputConfig configs = new OutputConfig();
        long clients = 0, bytes = 0, readNanos = 0, addNanos = 0, closeNanos = 0, encodeNanos = 0;
        byte[] partial = null;
        ClientFiles files = new ClientFiles(spec.hadoopSettings(), spec.heapLocal());
        try (Aggregator aggregator = spec.newAggregator(); Round round = aggregator.newRound()) {
            while (entries.hasNext()) {
                Manifest.Entry entry = entries.next();
                long t0 = System.nanoTime();
                PeftAdapter adapter = null;
                try {
                    adapter = files.open(entry.location());
                    String problem = fold && adapter.config() == null
                            ? "--scale fold needs lora_alpha, but there is no " + PeftAdapter.CONFIG + " for this adapter"
                            : spec.schema().problem(adapter.tensors(), allowMissing);
                    if (problem != null) {
                        bad.add(new BadClient(entry.clientId(), entry.location(), problem));
                        continue;
                    }
                    long t1 = System.nanoTime();
                    // NORM weighs each client by ||B A||_F, and fedlora aggregate takes no data weights with it.
                    double weight = norm ? 1 : entry.weight();
                    round.add(adapter.toUpdate(entry.clientId(), weight));
                    addNanos += System.nanoTime() - t1;
                    readNanos += t1 - t0;
                    configs.add(entry.index(), adapter.config(), PeftAdapter.moduleRanks(adapter.tensors()), weight);
                    clients++;
                    bytes += adapter.byteSize();
                } catch (IOException | UncheckedIOException | IllegalArgumentException e) {
                    // Unreadable or malformed files, and clients the aggregator refuses (InvalidUpdateException,
                    // with the round unchanged). Anything else is a failure of the task, which Spark retries.
                    bad.add(new BadClient(entry.clientId(), entry.location(), reason(e, entry.clientId())));
                } finally {
                    if (adapter != null) {
                        // Unmapping a client is a JVM-wide handshake (its arena is shared): worth its own line.
                        long c0 = System.nanoTime();
                        adapter.close();
                        closeNanos += System.nanoTime() - c0;
                    }
                }
            }
            if (clients > 0) {
                long t0 = System.nanoTime();
                partial = round.toPartial().toBytes();
                encodeNanos = System.nanoTime() - t0;
            }
        }
        TaskContext task = TaskContext.get();
        if (task != null && task.attemptNumber() == 0 && "true".equals(task.getLocalProperty(FAIL_FIRST_ATTEMPT))) {
            throw new IllegalStateException("failing attempt 0 of partition " + task.partitionId() + " on purpose (test)");
        }
        long wall = System.nanoTime() - start;
        return new TaskResult(partial, clients, bad, bytes, readNanos, addNanos, closeNanos, encodeNanos, 0, wall, wall, 1,
                configs);
    }

    /**
     * The tree reduction's step: two partials into one (merge is addition), bad clients and
     * counters joined. The first partial is read into a round, the second is added from its bytes in place.
     */
    static TaskResult combine(Spec spec, TaskResult x, TaskResult y) {
        if (x.partial() == null || y.partial() == null) {
            return TaskResult.combined(x, y, x.partial() == null ? y.partial() : x.partial(), 0);
        }
        long t0 = System.nanoTime();
        byte[] merged;
        try (Aggregator aggregator = spec.newAggregator();
                Round round = aggregator.roundFromPartial(Partial.fromBytes(MemorySegment.ofArray(x.partial())))) {
            round.mergePartial(Partial.fromBytes(MemorySegment.ofArray(y.partial())));
            merged = round.toPartial().toBytes();
        }
        return TaskResult.combined(x, y, merged, System.nanoTime() - t0);
    }

    /** A one-line reason: the exception's message, which names the file or module, without the client (reported beside it). */
    static String reason(Exception e, String clientId) {
        String message = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
        if (e instanceof InvalidUpdateException refused) {
            String prefix = "client '" + clientId + "'";
            if (refused.source() != null && message.startsWith(prefix + " (" + refused.source() + ")")) {
                prefix += " (" + refused.source() + ")";
            }
            if (message.startsWith(prefix)) {
                message = message.substring(prefix.length()).replaceFirst("^(, |: )", "");
            }
        }
        return message.lines().findFirst().orElse(message);
    }

    static Map<String, Tensor> orderLike(List<String> keys, Map<String, Tensor> global) {
        Map<String, Tensor> ordered = new LinkedHashMap<>();
        for (String key : keys) {
            Tensor t = global.get(key);
            if (t != null) {
                ordered.put(key, t);
            }
        }
        ordered.putAll(global);
        return ordered;
    }
}
