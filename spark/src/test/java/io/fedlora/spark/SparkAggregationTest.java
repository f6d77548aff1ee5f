package io.fedlora.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.io.PeftAdapter;
import io.fedlora.io.Safetensors;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.spark.SparkConf;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.api.java.JavaSparkContext;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The job on {@code local-cluster} (two executor JVMs, one core each) against single-process
 * {@code fedlora aggregate} (the library's command line, run in this JVM) on the same clients:
 * a few hundred generated clients of ranks 2-16 in F32, BF16 and F16, every strategy; a
 * manifest full of bad clients; and map tasks that fail once after their work.
 *
 * <p>Results are compared with {@code |spark - single| <= 1e-5 * max|single|} per tensor: both sum in
 * float32, but in different orders (partitions, then the tree). The config and key order must be equal.
 */
class SparkAggregationTest {

    static final int CLIENTS = 240;
    static final int HIDDEN = 32;
    static final int LAYERS = 2;

    static Path dir;
    static List<GenerateClients.Client> clients;
    static Manifest manifest;
    static JavaSparkContext spark;

    @BeforeAll
    static void start() throws Exception {
        dir = Files.createTempDirectory("fedlora-spark-test");
        clients = GenerateClients.write(dir.resolve("clients"), CLIENTS, HIDDEN, LAYERS, 7);
        manifest = Manifest.read(dir.resolve("clients").resolve(GenerateClients.MANIFEST));
        Files.createDirectories(Path.of(System.getenv("SPARK_HOME"), "jars"));
        SparkConf conf = new SparkConf().setAppName("fedlora-spark test").set("spark.task.maxFailures", "4")
                .set("spark.hadoop.fs." + LocalTestFileSystem.SCHEME + ".impl", LocalTestFileSystem.class.getName());
        Main.configure(conf, "local-cluster[2,1,768]");
        spark = new JavaSparkContext(conf);
        spark.setLogLevel("WARN");
        // Both executor JVMs up before the first job, so that its tasks really are spread over two.
        long deadline = System.nanoTime() + 120_000_000_000L;
        while (spark.sc().getExecutorMemoryStatus().size() < 3 && System.nanoTime() < deadline) {
            Thread.sleep(200);
        }
        assertEquals(3, spark.sc().getExecutorMemoryStatus().size(), "the driver and two executors");
    }

    @AfterAll
    static void stop() throws IOException {
        if (spark != null) {
            spark.close();
        }
        if (dir != null) {
            try (Stream<Path> walk = Files.walk(dir)) {
                for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
                    Files.deleteIfExists(p);
                }
            }
        }
    }

    /** The strategies that sum factor by factor; the product-space ones below. */
    @ParameterizedTest
    @EnumSource(value = Strategy.class, names = {"ZERO", "REPLICATION", "NORM"})
    void everyStrategyEqualsSingleProcessAggregation(Strategy strategy) throws IOException {
        String name = strategy.name().toLowerCase(Locale.ROOT);
        Path out = dir.resolve("spark-" + name);
        SparkAggregation.Result result = SparkAggregation.run(spark, manifest, SparkAggregation.Options.of(Policy.of(strategy)), out);

        assertEquals(CLIENTS, result.clients());
        assertEquals(List.of(), result.bad());
        assertTrue(result.partitions() >= 2, "several map tasks: " + result.partitions());
        assertEquals(result.partitions(), result.totals().tasks(), "one result per map task, none twice");
        assertEquals(16, result.globalRank());
        assertSameAdapter(singleProcess(name, clients, dir.resolve("single-" + name)), out);
    }

    /**
     * SVD and STACK: the partials carry every client's factors through the tree reduction, and the
     * driver restores the manifest order, so the result is what {@code fedlora aggregate} gives for
     * the clients in manifest order (STACK's components are in client order: a reduction order
     * left standing would fail this).
     */
    @ParameterizedTest
    @EnumSource(value = Strategy.class, names = {"SVD", "STACK"})
    void productSpaceStrategiesCarryTheFactorsAndEqualSingleProcessAggregation(Strategy strategy) throws IOException {
        String name = strategy.cliName();
        Path out = dir.resolve("spark-" + name);
        SparkAggregation.Result result = SparkAggregation.run(spark, manifest, SparkAggregation.Options.of(Policy.of(strategy)), out);

        assertEquals(CLIENTS, result.clients());
        assertEquals(List.of(), result.bad());
        assertTrue(result.partitions() >= 2, "several map tasks: " + result.partitions());
        assertSameAdapter(singleProcess(name, clients, dir.resolve("single-" + name)), out);
    }

    /** SVD's balanced split travels with the policy to every task and partial: the result is {@code aggregate --split balanced}'s. */
    @Test
    void balancedSvdEqualsSingleProcessAggregation() throws IOException {
        Path out = dir.resolve("spark-svd-balanced");
        SparkAggregation.Result result = SparkAggregation.run(spark, manifest,
                SparkAggregation.Options.of(Policy.of(Strategy.SVD).withSplit(io.fedlora.product.Split.BALANCED)), out);
        assertEquals(List.of(), result.bad());
        assertSameAdapter(singleProcess("svd", clients, dir.resolve("single-svd-balanced"), "--split", "balanced"), out);
        Path flex = dir.resolve("single-svd-flexlora");
        singleProcess("svd", clients, flex);
        try (PeftAdapter a = PeftAdapter.open(out); PeftAdapter b = PeftAdapter.open(flex)) {
            String key = a.tensors().keySet().stream().filter(k -> k.contains("lora_A")).findFirst().orElseThrow();
            assertFalse(java.util.Arrays.equals(a.tensors().get(key).toFloatArray(), b.tensors().get(key).toFloatArray()),
                    "the balanced factors are not FlexLoRA's");
        }
    }

    @Test
    void everyStrategyIsTested() {
        for (Strategy strategy : Strategy.values()) {
            assertTrue(List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM, Strategy.SVD, Strategy.STACK).contains(strategy),
                    strategy + " is new: add it to everyStrategyEqualsSingleProcessAggregation or refuse it");
        }
    }

    @Test
    void aFixedGlobalRankEqualsSingleProcessToo() throws IOException {
        Path out = dir.resolve("spark-rank8");
        SparkAggregation.Result result = SparkAggregation.run(spark, manifest,
                SparkAggregation.Options.of(Policy.of(Strategy.REPLICATION).withGlobalRank(8)).withDtype(DType.BF16), out);
        assertEquals(8, result.globalRank());
        assertSameAdapter(singleProcess("replication", clients, dir.resolve("single-rank8"), "--rank", "8", "--dtype", "bf16"), out);
    }

    /** Every task fails once after filling its round; the retries' results replace the lost ones. */
    @Test
    void retriedTasksDoNotCountTwice() throws IOException {
        Path out = dir.resolve("spark-retried");
        AtomicInteger failedAttempts = new AtomicInteger();
        SparkListener failures = new SparkListener() {
            @Override
            public void onTaskEnd(SparkListenerTaskEnd end) {
                if (!end.taskInfo().successful()) {
                    failedAttempts.incrementAndGet();
                }
            }
        };
        spark.sc().addSparkListener(failures);
        spark.setLocalProperty(SparkAggregation.FAIL_FIRST_ATTEMPT, "true");
        SparkAggregation.Result result;
        try {
            result = SparkAggregation.run(spark, manifest, SparkAggregation.Options.of(Policy.of(Strategy.ZERO)).withFold(true), out);
        } finally {
            spark.setLocalProperty(SparkAggregation.FAIL_FIRST_ATTEMPT, null);
            spark.sc().removeSparkListener(failures);
        }
        // Listener events arrive asynchronously: wait (briefly) until every map task's first attempt is seen.
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (failedAttempts.get() < result.partitions() && System.nanoTime() < deadline) {
            Thread.yield();
        }
        assertEquals(result.partitions(), failedAttempts.get(), "every map task failed once and was retried");
        assertEquals(CLIENTS, result.clients());
        assertEquals(result.partitions(), result.totals().tasks());
        assertSameAdapter(singleProcess("zero", clients, dir.resolve("single-retried"), "--scale", "fold"), out);
    }

    /** Clients given as URIs: {@code file:}, another scheme (read through Hadoop), paths; local ones read into the heap. */
    @Test
    void clientsReadThroughHadoopFileSystemsEqualTheSameOnDisk() throws IOException {
        List<String> lines = new ArrayList<>();
        for (int k = 0; k < clients.size(); k++) {
            GenerateClients.Client c = clients.get(k);
            String location = switch (k % 3) {
                case 0 -> LocalTestFileSystem.SCHEME + "://" + c.dir().toAbsolutePath();
                case 1 -> c.dir().toAbsolutePath().toUri().toString();
                default -> c.dir().toString();
            };
            lines.add(c.id() + "," + location + "," + (long) c.weight());
        }
        Path remoteFile = clients.get(0).dir().resolve(PeftAdapter.WEIGHTS).toAbsolutePath();
        lines.add("remote-missing," + LocalTestFileSystem.SCHEME + "://" + dir.resolve("nowhere").toAbsolutePath() + ",1");
        lines.add("remote-file," + LocalTestFileSystem.SCHEME + "://" + remoteFile + ",1");
        Path manifestFile = dir.resolve("uris.csv");
        Files.write(manifestFile, lines, StandardCharsets.UTF_8);

        Path out = dir.resolve("spark-uris");
        SparkAggregation.Result result = SparkAggregation.run(spark, Manifest.read(manifestFile),
                SparkAggregation.Options.of(Policy.of(Strategy.NORM)).withFold(true).withHeapLocal(true), out);
        assertEquals(CLIENTS, result.clients());
        Map<String, String> reasons = new TreeMap<>();
        result.bad().forEach(b -> reasons.put(b.clientId(), b.reason()));
        assertEquals(Set.of("remote-file", "remote-missing"), reasons.keySet());
        assertTrue(reasons.get("remote-missing").contains("no such file or directory"), reasons.toString());
        assertTrue(reasons.get("remote-file").contains("must be a PEFT directory"), reasons.toString());
        assertEquals(List.of("--strategy norm weights each client by ||B A||_F; the manifest's weights are not used"), result.notes());
        assertSameAdapter(singleProcess("norm", clients, dir.resolve("single-uris"), "--scale", "fold"), out);
    }

    @Test
    void badClientsAreNamedAndLeftOut() throws IOException {
        Path bad = Files.createDirectories(dir.resolve("bad"));
        List<GenerateClients.Client> good = clients.subList(0, 60);
        GenerateClients.Client template = good.get(1);
        Map<String, String> expected = new LinkedHashMap<>(); // id -> a word of the reason
        List<String> lines = new ArrayList<>();

        lines.add("missing," + bad.resolve("no-such-client") + ",3");
        expected.put("missing", "no such file");
        Path nan = client(bad, "nan", template, tensors -> tensors.put(firstA(tensors), withNaN(tensors.get(firstA(tensors)))));
        lines.add("nan," + nan + ",2");
        expected.put("nan", "NaN");
        lines.add("client_id,path_or_uri,weight");  // not the first line: a bad line, not a header
        expected.put("client_id", "weight");
        for (int k = 0; k < good.size(); k++) {
            GenerateClients.Client c = good.get(k);
            lines.add(c.id() + "," + c.dir() + "," + (long) c.weight());
            if (k == 10) {
                Path truncated = Files.createDirectories(bad.resolve("truncated"));
                byte[] whole = Files.readAllBytes(template.dir().resolve(PeftAdapter.WEIGHTS));
                Files.write(truncated.resolve(PeftAdapter.WEIGHTS), java.util.Arrays.copyOf(whole, whole.length / 2));
                lines.add("truncated," + truncated + ",1");
                expected.put("truncated", "bytes");
                Path config = client(bad, "bad-config", template, tensors -> { });
                Files.writeString(config.resolve(PeftAdapter.CONFIG), "{\"r\": 8,");
                lines.add("bad-config," + config + ",1");
                expected.put("bad-config", "JSON");
                lines.add("negative,"  + template.dir() + ",-4");
                expected.put("negative", "weight");
                lines.add(c.id() + "," + template.dir() + ",1");
                expected.put(c.id(), "already used");
            }
            if (k == 30) {
                Path wide = client(bad, "wrong-features", template, tensors -> {
                    String key = firstA(tensors);
                    tensors.put(key, Tensor.of(new float[(int) tensors.get(key).dim(0) * (HIDDEN + 1)],
                            tensors.get(key).dim(0), HIDDEN + 1));
                });
                lines.add("wrong-features," + wide + ",1");
                // Checked against the first client that is usable, not the NaN one before it.
                expected.put("wrong-features", "has shape [2, " + (HIDDEN + 1) + "] but the first client (" + good.get(0).id() + ") has [");
                Path lacking = client(bad, "missing-module", template, tensors -> {
                    String key = firstA(tensors);
                    tensors.remove(key);
                    tensors.remove(key.replace("lora_A", "lora_B"));
                });
                lines.add("missing-module," + lacking + ",1");
                expected.put("missing-module", "lacks");
                Path extra = client(bad, "extra-tensor", template, tensors ->
                        tensors.put("base_model.model.pooler.weight", Tensor.of(new float[4], 4)));
                lines.add("extra-tensor," + extra + ",1");
                expected.put("extra-tensor", "first client");
                lines.add("empty-dir," + Files.createDirectories(bad.resolve("empty-dir")) + ",1");
                expected.put("empty-dir", PeftAdapter.WEIGHTS);
                lines.add("two-fields," + template.dir());
                expected.put("two-fields", "3 fields");
            }
        }
        Path manifestFile = bad.resolve("bad.csv");
        Files.write(manifestFile, lines, StandardCharsets.UTF_8);

        Path out = dir.resolve("spark-bad");
        SparkAggregation.Result result = SparkAggregation.run(spark, Manifest.read(manifestFile),
                SparkAggregation.Options.of(Policy.of(Strategy.REPLICATION)).withPartitions(5), out);

        assertEquals(good.size(), result.clients());
        Map<String, String> reasons = new TreeMap<>();
        for (BadClient b : result.bad()) {
            String id = b.clientId();
            assertFalse(reasons.containsKey(id), "reported once: " + b);
            reasons.put(id, b.reason());
        }
        assertEquals(new TreeMap<>(expected).keySet(), reasons.keySet(), "bad clients: " + result.bad());
        expected.forEach((id, word) -> assertTrue(reasons.get(id).contains(word), id + ": " + reasons.get(id)));
        // The client is named beside the reason, not again inside it.
        reasons.forEach((id, reason) -> assertFalse(reason.isBlank() || reason.startsWith(" ") || reason.startsWith("(")
                || reason.contains("client '" + id + "'"), id + ": " + reason));
        assertSameAdapter(singleProcess("replication", good, dir.resolve("single-good")), out);
    }

    // ---- helpers ---------------------------------------------------------------------------

    /** {@code fedlora aggregate} on the clients, in this JVM, into {@code out}. */
    static Path singleProcess(String strategy, List<GenerateClients.Client> of, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("aggregate", "--strategy", strategy, "-o", out.toString()));
        if (!strategy.equals("norm")) { // NORM takes no data weights: the job leaves the manifest's out
            args.addAll(List.of("--weights", of.stream().map(c -> Long.toString((long) c.weight())).collect(Collectors.joining(","))));
        }
        args.addAll(List.of(extra));
        of.forEach(c -> args.add(c.dir().toString()));
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int status = io.fedlora.cli.Main.run(args.toArray(String[]::new), new PrintStream(new ByteArrayOutputStream()),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        assertEquals(0, status, err.toString(StandardCharsets.UTF_8));
        return out;
    }

    /**
     * Same keys in the same order, dtypes and shapes, values to 1e-5 of each tensor's largest; the
     * same config, its numbers (mean LoRA alphas, summed in another order) to 1e-12.
     */
    static void assertSameAdapter(Path expectedDir, Path actualDir) throws IOException {
        ObjectMapper json = new ObjectMapper();
        assertSameJson(json.readTree(expectedDir.resolve(PeftAdapter.CONFIG).toFile()),
                json.readTree(actualDir.resolve(PeftAdapter.CONFIG).toFile()), "adapter_config.json");
        try (PeftAdapter expected = PeftAdapter.open(expectedDir); PeftAdapter actual = PeftAdapter.open(actualDir)) {
            assertEquals(List.copyOf(expected.tensors().keySet()), List.copyOf(actual.tensors().keySet()));
            assertEquals(expected.metadata(), actual.metadata());
            for (var e : expected.tensors().entrySet()) {
                Tensor want = e.getValue(), got = actual.tensors().get(e.getKey());
                assertEquals(want.dtype(), got.dtype(), e.getKey());
                assertEquals(List.of(box(want.shape())), List.of(box(got.shape())), e.getKey());
                float[] w = want.toFloatArray(), g = got.toFloatArray();
                double largest = 0;
                for (float v : w) {
                    largest = Math.max(largest, Math.abs(v));
                }
                assertTrue(largest > 0, e.getKey() + " is all zeros");
                double tolerance = 1e-5 * largest + (want.dtype() == DType.F32 ? 0 : 0.01 * largest);
                for (int i = 0; i < w.length; i++) {
                    if (!(Math.abs(w[i] - g[i]) <= tolerance)) {
                        throw new AssertionError(e.getKey() + "[" + i + "]: single process " + w[i] + ", Spark " + g[i]
                                + " (tolerance " + tolerance + ")");
                    }
                }
            }
        }
    }

    static void assertSameJson(JsonNode want, JsonNode got, String where) {
        if (want.isNumber() && got.isNumber()) {
            double w = want.doubleValue(), g = got.doubleValue();
            assertTrue(Math.abs(w - g) <= 1e-12 * Math.max(Math.abs(w), Math.abs(g)), where + ": " + want + " vs " + got);
            return;
        }
        assertEquals(want.getNodeType(), got.getNodeType(), where + ": " + want + " vs " + got);
        if (want.isObject()) {
            assertEquals(List.copyOf(want.properties().stream().map(Map.Entry::getKey).toList()),
                    List.copyOf(got.properties().stream().map(Map.Entry::getKey).toList()), where);
            want.properties().forEach(e -> assertSameJson(e.getValue(), got.get(e.getKey()), where + "." + e.getKey()));
        } else if (want.isArray()) {
            assertEquals(want.size(), got.size(), where);
            for (int i = 0; i < want.size(); i++) {
                assertSameJson(want.get(i), got.get(i), where + "[" + i + "]");
            }
        } else {
            assertEquals(want, got, where);
        }
    }

    private static Long[] box(long[] shape) {
        return java.util.Arrays.stream(shape).boxed().toArray(Long[]::new);
    }

    interface Edit {
        void apply(Map<String, Tensor> tensors);
    }

    /** A copy of {@code template} with its tensors edited, as a new client directory. */
    static Path client(Path parent, String name, GenerateClients.Client template, Edit edit) throws IOException {
        Path out = Files.createDirectories(parent.resolve(name));
        try (PeftAdapter adapter = PeftAdapter.open(template.dir())) {
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            adapter.tensors().forEach((k, t) -> tensors.put(k, Tensor.of(t.toFloatArray(), t.shape())));
            edit.apply(tensors);
            Safetensors.write(out.resolve(PeftAdapter.WEIGHTS), tensors, Map.of("format", "pt"));
        }
        Files.copy(template.dir().resolve(PeftAdapter.CONFIG), out.resolve(PeftAdapter.CONFIG));
        return out;
    }

    static String firstA(Map<String, Tensor> tensors) {
        return tensors.keySet().stream().filter(k -> k.endsWith(".lora_A.weight")).findFirst().orElseThrow();
    }

    static Tensor withNaN(Tensor t) {
        float[] v = t.toFloatArray();
        v[new SplittableRandom(3).nextInt(v.length)] = Float.NaN;
        return Tensor.of(v, t.shape());
    }
}
