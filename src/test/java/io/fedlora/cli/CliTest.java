package io.fedlora.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.tensor.DType;
import io.fedlora.Strategy;
import io.fedlora.tensor.Tensor;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The command line end to end, in process: results equal the facade's, outputs are valid PEFT
 * adapters, and every bad input gives exit 1 with one line naming the file and the problem and
 * leaves nothing behind.
 */
class CliTest {

    @TempDir
    Path tmp;

    Path clientsDir;
    Path outParent;

    @BeforeEach
    void dirs() throws Exception {
        clientsDir = Files.createDirectory(tmp.resolve("clients"));
        outParent = Files.createDirectory(tmp.resolve("out"));
    }

    record Run(int status, String out, String err) {
    }

    static Run cli(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int status;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
                PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            status = Main.run(args, o, e);
        }
        return new Run(status, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    static final String[] MODULES = {"base_model.model.layers.0.attn.q_proj", "base_model.model.layers.0.mlp.up_proj"};
    static final int[][] SHAPES = {{24, 24}, {40, 24}}; // {out, in}
    static final String HEAD = "base_model.model.classifier.weight";

    /** A client adapter with per-module ranks, a non-LoRA head, and a config. */
    static Map<String, Tensor> tensors(int[] ranks, DType dtype, long seed) {
        SplittableRandom random = new SplittableRandom(seed);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (int m = 0; m < MODULES.length; m++) {
            int out = SHAPES[m][0], in = SHAPES[m][1], r = ranks[m];
            tensors.put(MODULES[m] + ".lora_A.weight", Tensor.convert(values(random, r * in), dtype, r, in));
            tensors.put(MODULES[m] + ".lora_B.weight", Tensor.convert(values(random, out * r), dtype, out, r));
        }
        tensors.put(HEAD, Tensor.convert(values(random, 3 * 5), dtype, 3, 5));
        return tensors;
    }

    static float[] values(SplittableRandom random, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return v;
    }

    static AdapterConfig config(int r, double alpha, boolean rslora) throws Exception {
        Map<String, Object> json = new LinkedHashMap<>();
        json.put("peft_type", "LORA");
        json.put("r", r);
        json.put("lora_alpha", alpha);
        json.put("use_rslora", rslora);
        json.put("target_modules", List.of("q_proj", "up_proj"));
        json.put("base_model_name_or_path", "tiny-test-model");
        return AdapterConfig.of(json, "test");
    }

    /** Writes clients with these module ranks as PEFT directories; returns their paths. */
    List<Path> writeClients(int[][] ranks, DType[] dtypes, double alpha) throws Exception {
        List<Path> paths = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            Path dir = clientsDir.resolve("client" + k);
            int maxRank = Math.max(ranks[k][0], ranks[k][1]);
            PeftAdapter.write(dir, tensors(ranks[k], dtypes[k % dtypes.length], 100 + k), null,
                    config(maxRank, alpha, false), Map.of("format", "pt"), maxRank);
            paths.add(dir);
        }
        return paths;
    }

    static final int[][] RANKS = {{2, 4}, {8, 2}, {4, 4}, {8, 3}};
    static final DType[] MIXED = {DType.F32, DType.BF16, DType.F16};

    static String[] args(List<Path> clients, String... options) {
        List<String> all = new ArrayList<>(List.of(options));
        clients.forEach(p -> all.add(p.toString()));
        return all.toArray(String[]::new);
    }

    static Map<String, float[]> read(Path adapter) throws Exception {
        Map<String, float[]> values = new LinkedHashMap<>();
        try (PeftAdapter a = PeftAdapter.open(adapter)) {
            a.tensors().forEach((k, t) -> values.put(k, t.toFloatArray()));
        }
        return values;
    }

    static Map<String, long[]> shapes(Path adapter) throws Exception {
        Map<String, long[]> shapes = new LinkedHashMap<>();
        try (PeftAdapter a = PeftAdapter.open(adapter)) {
            a.tensors().forEach((k, t) -> shapes.put(k, t.shape()));
        }
        return shapes;
    }

    static JsonNode configOf(Path adapter) throws Exception {
        return new ObjectMapper().readTree(adapter.resolve(PeftAdapter.CONFIG).toFile());
    }

    /** The facade's batch result on the same adapters, read through the same reader. */
    static Map<String, Tensor> facade(List<Path> clients, double[] weights, Strategy strategy, int rank,
            boolean fold) throws Exception {
        List<PeftAdapter> open = new ArrayList<>();
        try {
            List<ClientUpdate> updates = new ArrayList<>();
            for (int k = 0; k < clients.size(); k++) {
                PeftAdapter a = PeftAdapter.open(clients.get(k));
                open.add(a);
                updates.add(a.toUpdate(clients.get(k).toString(), weights[k]));
            }
            Aggregator.Builder builder = Aggregator.builder().strategy(strategy).globalRank(rank);
            if (fold) {
                builder.foldScale(open.get(0).config().scale());
            }
            try (Aggregator aggregator = builder.build()) {
                Map<String, Tensor> global = aggregator.aggregate(updates);
                Map<String, Tensor> copy = new LinkedHashMap<>();
                global.forEach((k, t) -> copy.put(k, Tensor.of(t.toFloatArray(), t.shape())));
                return copy;
            }
        } finally {
            open.forEach(PeftAdapter::close);
        }
    }

    @ParameterizedTest
    @EnumSource(value = Strategy.class, names = {"ZERO", "REPLICATION", "NORM"}) // SVD, STACK: FidelityCommandTest, ProductFacadeTest
    void aggregateMatchesTheFacade(Strategy strategy) throws Exception {
        List<Path> clients = writeClients(RANKS, MIXED, 16);
        Path out = outParent.resolve("global");
        // NORM weights clients by their norms and refuses --weights (CliSafetyTest).
        boolean weighted = strategy != Strategy.NORM;
        List<String> options = new ArrayList<>(List.of("aggregate", "--strategy", strategy.cliName(), "-o", out.toString()));
        if (weighted) {
            options.addAll(List.of("--weights", "1,2,3,4"));
        }
        Run run = cli(args(clients, options.toArray(String[]::new)));
        assertEquals(0, run.status(), run.err());
        assertTrue(run.out().contains("4 clients"), run.out());
        assertEquals("", run.err(), "quiet on success");

        Map<String, Tensor> expected = facade(clients, weighted ? new double[] {1, 2, 3, 4} : new double[] {1, 1, 1, 1},
                strategy, 0, false);
        Map<String, float[]> actual = read(out);
        assertEquals(List.copyOf(expected.keySet()), List.copyOf(actual.keySet()), "same keys, first client's order");
        // A round that adds the clients in order computes exactly what the batch call does.
        expected.forEach((k, t) -> assertArrayEquals(t.toFloatArray(), actual.get(k), k));
        Map<String, long[]> shapes = shapes(out);
        assertArrayEquals(new long[] {8, 24}, shapes.get(MODULES[0] + ".lora_A.weight"));
        assertArrayEquals(new long[] {40, 4}, shapes.get(MODULES[1] + ".lora_B.weight"));

        // r is the global rank; modules of another rank are in rank_pattern, by base-model name.
        JsonNode config = configOf(out);
        assertEquals(8, config.get("r").asInt());
        assertEquals(1, config.get("rank_pattern").size());
        assertEquals(4, config.get("rank_pattern").get("layers.0.mlp.up_proj").asInt());
        assertEquals("tiny-test-model", config.get("base_model_name_or_path").asText(), "first client's config kept");
        try (Stream<Path> left = Files.list(outParent)) {
            assertEquals(List.of(out), left.toList(), "no temporary directory left");
        }
    }

    @Test
    void fixedRankAndBf16Output() throws Exception {
        List<Path> clients = writeClients(RANKS, MIXED, 16);
        Path out = outParent.resolve("global");
        Run run = cli(args(clients, "aggregate", "--strategy", "replication", "--rank", "6", "--dtype", "bf16",
                "-o", out.toString()));
        assertEquals(0, run.status(), run.err());
        Map<String, Tensor> expected = facade(clients, new double[] {1, 1, 1, 1}, Strategy.REPLICATION, 6, false);
        try (PeftAdapter global = PeftAdapter.open(out)) {
            for (var e : expected.entrySet()) {
                Tensor t = global.tensors().get(e.getKey());
                assertEquals(DType.BF16, t.dtype());
                assertArrayEquals(e.getValue().to(DType.BF16).toFloatArray(), t.toFloatArray(), e.getKey());
            }
        }
        JsonNode config = configOf(out);
        assertEquals(6, config.get("r").asInt());
        assertEquals(0, config.get("rank_pattern").size());
    }

    @Test
    void scaleFoldMatchesTheFacadeAndChangesB() throws Exception {
        List<Path> clients = writeClients(RANKS, new DType[] {DType.F32}, 16);
        Path folded = outParent.resolve("folded");
        Path plain = outParent.resolve("plain");
        assertEquals(0, cli(args(clients, "aggregate", "--strategy", "zero", "--scale", "fold", "-o", folded.toString())).status());
        assertEquals(0, cli(args(clients, "aggregate", "--strategy", "zero", "-o", plain.toString())).status());
        Map<String, Tensor> expected = facade(clients, new double[] {1, 1, 1, 1}, Strategy.ZERO, 0, true);
        Map<String, float[]> actual = read(folded);
        expected.forEach((k, t) -> assertArrayEquals(t.toFloatArray(), actual.get(k), k));
        String b = MODULES[0] + ".lora_B.weight";
        assertFalse(java.util.Arrays.equals(actual.get(b), read(plain).get(b)), "folding rescales B");
        String a = MODULES[0] + ".lora_A.weight";
        assertArrayEquals(read(plain).get(a), actual.get(a), "A is not rescaled");
    }

    @Test
    void truncateCutsToTheRequestedRank() throws Exception {
        List<Path> clients = writeClients(RANKS, MIXED, 16);
        Path global = outParent.resolve("global");
        assertEquals(0, cli(args(clients, "aggregate", "--strategy", "replication", "--rank", "8",
                "-o", global.toString())).status());
        Path cut = outParent.resolve("cut");
        Run run = cli("truncate", "--rank", "3", global.toString(), "-o", cut.toString());
        assertEquals(0, run.status(), run.err());
        Map<String, float[]> full = read(global);
        Map<String, long[]> shapes = shapes(cut);
        Map<String, float[]> values = read(cut);
        for (int m = 0; m < MODULES.length; m++) {
            int out = SHAPES[m][0], in = SHAPES[m][1];
            assertArrayEquals(new long[] {3, in}, shapes.get(MODULES[m] + ".lora_A.weight"));
            assertArrayEquals(new long[] {out, 3}, shapes.get(MODULES[m] + ".lora_B.weight"));
            float[] a = full.get(MODULES[m] + ".lora_A.weight");
            assertArrayEquals(java.util.Arrays.copyOf(a, 3 * in), values.get(MODULES[m] + ".lora_A.weight"));
            float[] b = full.get(MODULES[m] + ".lora_B.weight");
            float[] bCut = values.get(MODULES[m] + ".lora_B.weight");
            for (int i = 0; i < out; i++) {
                for (int j = 0; j < 3; j++) {
                    assertEquals(b[i * 8 + j], bCut[i * 3 + j]);
                }
            }
        }
        assertArrayEquals(full.get(HEAD), values.get(HEAD));
        assertEquals(3, configOf(cut).get("r").asInt());
        assertEquals(0, configOf(cut).get("rank_pattern").size());
    }

    @Test
    void bareSafetensorsFiles() throws Exception {
        List<Path> clients = writeClients(RANKS, MIXED, 16);
        List<Path> files = clients.stream().map(c -> c.resolve(PeftAdapter.WEIGHTS)).toList();
        Path out = Files.createDirectory(outParent.resolve("empty-existing"));
        Run run = cli(args(files, "aggregate", "--strategy", "norm", "-o", out.toString()));
        assertEquals(0, run.status(), run.err());
        Map<String, Tensor> expected = facade(clients, new double[] {1, 1, 1, 1}, Strategy.NORM, 0, false);
        Map<String, float[]> actual = read(out);
        expected.forEach((k, t) -> assertArrayEquals(t.toFloatArray(), actual.get(k), k));
    }

    @Test
    void progressIsShownWhenAsked() throws Exception {
        List<Path> clients = writeClients(RANKS, MIXED, 16);
        Run run = cli(args(clients, "aggregate", "--strategy", "zero", "--progress", "-o",
                outParent.resolve("g").toString()));
        assertEquals(0, run.status(), run.err());
        assertTrue(run.err().contains("read 4/4 clients"), run.err());
        Run quiet = cli(args(clients, "aggregate", "--strategy", "zero", "-o", outParent.resolve("h").toString()));
        assertFalse(quiet.err().contains("clients,"), "no progress when stderr is not a terminal: " + quiet.err());
    }

    static Stream<Arguments> usageErrors() {
        return Stream.of(
                Arguments.of((Object) new String[] {}),
                Arguments.of((Object) new String[] {"frobnicate"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "median", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "-o", "x"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--weights", "1,2", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--weights", "-1", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--dtype", "f64", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--backend", "tpu", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--scale", "x", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"aggregate", "--strategy", "zero", "--rank", "-3", "-o", "x", "c"}),
                Arguments.of((Object) new String[] {"truncate", "--rank", "0", "g", "-o", "x"}),
                Arguments.of((Object) new String[] {"aggregate", "--bogus"}));
    }

    @ParameterizedTest
    @MethodSource("usageErrors")
    void badUsageExitsTwo(String[] args) {
        Run run = cli(args);
        assertEquals(2, run.status(), run.err());
        assertTrue(run.err().startsWith("fedlora: "), run.err());
    }

    /** Every malformed safetensors case, as a client among good ones: exit 1, file and problem named, nothing written. */
    static Stream<Arguments> malformed() {
        return io.fedlora.io.SafetensorsFixtures.malformed();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("malformed")
    void malformedClientFileFailsCleanly(String name, byte[] bytes, String problem) throws Exception {
        List<Path> clients = writeClients(new int[][] {{2, 2}, {4, 4}}, MIXED, 16);
        Path bad = clients.get(1).resolve(PeftAdapter.WEIGHTS);
        Files.write(bad, bytes);
        assertFailsCleanly(clients, bad.toString(), problem);
    }

    void assertFailsCleanly(List<Path> clients, String file, String problem, String... options) throws Exception {
        Path out = outParent.resolve("global");
        List<String> all = new ArrayList<>(List.of("aggregate", "--strategy", "replication"));
        all.addAll(List.of(options));
        all.addAll(List.of("-o", out.toString()));
        clients.forEach(c -> all.add(c.toString()));
        Run run = cli(all.toArray(String[]::new));
        assertEquals(1, run.status(), run.err());
        String line = run.err().strip();
        assertEquals(1, line.lines().count(), "one line: " + line);
        assertTrue(line.contains(file), "'" + line + "' should name " + file);
        assertTrue(line.contains(problem), "'" + line + "' should say '" + problem + "'");
        assertFalse(line.contains("\tat "), "no stack trace without --verbose");
        try (Stream<Path> left = Files.list(outParent)) {
            assertEquals(List.of(), left.toList(), "no output directory or temporary file left");
        }
    }

    @Test
    void badClientsAreNamed() throws Exception {
        List<Path> clients = writeClients(new int[][] {{2, 2}, {4, 4}, {3, 3}}, MIXED, 16);
        Path second = clients.get(1);

        // A factor without its partner (the facade's check, mapped to the file).
        try (PeftAdapter a = PeftAdapter.open(second)) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            a.tensors().forEach((k, v) -> t.put(k, Tensor.of(v.toFloatArray(), v.shape())));
            t.remove(MODULES[1] + ".lora_B.weight");
            Path broken = clientsDir.resolve("no-partner");
            PeftAdapter.write(broken, t, null, a.config(), Map.of(), 4);
            assertFailsCleanly(List.of(clients.get(0), broken), broken.toString(), "no " + MODULES[1] + ".lora_B.weight");

            // NaN in a factor.
            Map<String, Tensor> nan = new LinkedHashMap<>();
            a.tensors().forEach((k, v) -> nan.put(k, Tensor.of(v.toFloatArray(), v.shape())));
            float[] values = nan.get(MODULES[0] + ".lora_A.weight").toFloatArray();
            values[5] = Float.NaN;
            nan.put(MODULES[0] + ".lora_A.weight", Tensor.of(values, 4, 24));
            Path withNan = clientsDir.resolve("nan");
            PeftAdapter.write(withNan, nan, null, a.config(), Map.of(), 4);
            assertFailsCleanly(List.of(clients.get(0), withNan), withNan.toString(), "NaN");

            // A module only some clients have: the file lacking it is named; --allow-missing accepts it.
            Map<String, Tensor> fewer = new LinkedHashMap<>(t);
            fewer.remove(MODULES[1] + ".lora_A.weight");
            Path lacking = clientsDir.resolve("lacking");
            PeftAdapter.write(lacking, fewer, null, a.config(), Map.of(), 4);
            assertFailsCleanly(List.of(clients.get(0), lacking), lacking.toString(), "has no '" + MODULES[1]);
            Run allowed = cli("aggregate", "--strategy", "zero", "--allow-missing", "-o",
                    tmp.resolve("ok").toString(), clients.get(0).toString(), lacking.toString(), clients.get(2).toString());
            assertEquals(0, allowed.status(), allowed.err());
        }

        // Shapes that disagree between clients.
        Path otherShape = clientsDir.resolve("other-shape");
        Map<String, Tensor> t = tensors(new int[] {2, 2}, DType.F32, 9);
        t.put(MODULES[0] + ".lora_A.weight", Tensor.of(new float[2 * 30], 2, 30));
        PeftAdapter.write(otherShape, t, null, config(2, 16, false), Map.of(), 2);
        assertFailsCleanly(List.of(clients.get(0), otherShape), otherShape.toString(), "input features");

        // Files that are not there or not adapters.
        Path missing = clientsDir.resolve("missing");
        assertFailsCleanly(List.of(clients.get(0), missing), missing.toString(), "no such file");
        Path empty = Files.createDirectory(clientsDir.resolve("empty"));
        assertFailsCleanly(List.of(clients.get(0), empty), empty.toString(), "no adapter_model.safetensors");
        Path badConfig = clientsDir.resolve("bad-config");
        PeftAdapter.write(badConfig, tensors(new int[] {2, 2}, DType.F32, 1), null, config(2, 16, false), Map.of(), 2);
        Files.writeString(badConfig.resolve(PeftAdapter.CONFIG), "{\"r\": \"eight\"}");
        assertFailsCleanly(List.of(clients.get(0), badConfig), badConfig.resolve(PeftAdapter.CONFIG).toString(),
                "r is not a positive integer");
        Path noLora = clientsDir.resolve("no-lora.safetensors");
        io.fedlora.io.Safetensors.write(noLora, Map.of("x", Tensor.of(new float[] {1}, 1)), Map.of());
        assertFailsCleanly(List.of(clients.get(0), noLora), noLora.toString(), "no LoRA factors");

        // --scale fold needs every client's lora_alpha.
        Path bare = clientsDir.resolve("bare.safetensors");
        io.fedlora.io.Safetensors.write(bare, tensors(new int[] {2, 2}, DType.F32, 3), Map.of());
        assertFailsCleanly(List.of(clients.get(0), bare), bare.toString(), "needs lora_alpha", "--scale", "fold");
    }

    @Test
    void outOfMemorySaysWhichVariableGivesMoreHeap() {
        String line = Main.describe(new OutOfMemoryError("Java heap space"));
        assertTrue(line.contains("FEDLORA_JAVA_OPTS=-Xmx"), line);
    }

    @Test
    void verboseAddsTheStackTrace() throws Exception {
        Path missing = clientsDir.resolve("missing");
        Run quiet = cli("aggregate", "--strategy", "zero", "-o", outParent.resolve("o").toString(), missing.toString());
        Run verbose = cli("aggregate", "--verbose", "--strategy", "zero", "-o", outParent.resolve("o").toString(),
                missing.toString());
        assertEquals(1, quiet.status());
        assertEquals(1, verbose.status());
        assertEquals(1, quiet.err().strip().lines().count(), quiet.err());
        assertTrue(verbose.err().contains("\tat "), verbose.err());
    }

    @Test
    void truncateBeyondTheRankNamesTheFile() throws Exception {
        List<Path> clients = writeClients(new int[][] {{2, 2}}, MIXED, 16);
        Run run = cli("truncate", "--rank", "5", clients.get(0).toString(), "-o", outParent.resolve("t").toString());
        assertEquals(1, run.status());
        assertTrue(run.err().contains(clients.get(0).toString()) && run.err().contains("cannot truncate"), run.err());
        try (Stream<Path> left = Files.list(outParent)) {
            assertEquals(0, left.count());
        }
    }

    @Test
    void infoListsTheBackends() {
        Run run = cli("info");
        assertEquals(0, run.status(), run.err() + run.out());
        assertTrue(run.out().contains("java"), run.out());
        for (String backend : List.of("cuda", "vector", "scalar")) {
            assertTrue(run.out().contains(backend), run.out());
        }
        assertTrue(run.out().contains("chosen"), run.out());
        // The rule auto follows, and the choice for each kind of work.
        assertTrue(run.out().contains("auto      auto prefers CUDA for device-resident data"), run.out());
        assertTrue(run.out().contains("(zero, replication, norm)") && run.out().contains("(svd, stack)"), run.out());
    }

    @Test
    void demoShowsTheDilution() {
        Run run = cli("demo", "--repeat", "1");
        assertEquals(0, run.status(), run.err());
        String[] lines = run.out().lines().toArray(String[]::new);
        String zero = line(lines, "zero");
        String replication = line(lines, "replication");
        String norm = line(lines, "norm");
        // Uniform weights, one owner of components 5..19 out of 10: each factor is divided by 10.
        assertTrue(zero.endsWith(" 1.0 %"), zero);
        assertTrue(replication.endsWith("100.0 %"), replication);
        // NORM weights the rank-20 client by its larger norm: more kept than ZERO, less than REPLICATION.
        double kept = Double.parseDouble(norm.substring(0, norm.length() - 1).strip().replaceAll(".* ", ""));
        assertTrue(kept > 1.0 && kept < 100.0, norm);
    }

    private static String line(String[] lines, String strategy) {
        for (String l : lines) {
            if (l.startsWith(strategy + " ")) {
                return l.strip();
            }
        }
        throw new AssertionError("no line for " + strategy + " in " + String.join("\n", lines));
    }
}
