package io.fedlora.cli;

import static io.fedlora.cli.CliTest.MODULES;
import static io.fedlora.cli.CliTest.cli;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.Strategy;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.io.TargetModules;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Issue 9, "the output means what the clients meant": the written adapter_config.json, read back
 * with PEFT's rules (rank_pattern and alpha_pattern keys matched as {@code (.*\.)?(key)$}, first
 * match wins; scale = alpha / r, or alpha / sqrt(r) with use_rslora), gives {@code scale * B A}
 * equal to a float64 rendering of what the strategy computed: with --scale fold, the weighted
 * mean of the clients' own {@code s_k B_k A_k} components; with --scale none, the raw factor
 * average times the clients' weighted mean scale (the documented convention); after truncate,
 * the kept components at the input's scale.
 */
class ConfigScaleTest {

    @TempDir
    Path tmp;

    static final int[][] RANKS = {{2, 4}, {8, 2}, {4, 4}, {6, 3}};
    static final double[] ALPHAS = {16, 8, 32, 12};
    static final double[] WEIGHTS = {1, 2, 3, 4};

    /** Clients with different ranks and alphas; client 0 also has an alpha_pattern for up_proj. */
    List<Path> clients(boolean rsLora) throws Exception {
        List<Path> paths = new ArrayList<>();
        for (int k = 0; k < RANKS.length; k++) {
            Path dir = tmp.resolve("clients").resolve("c" + k);
            Files.createDirectories(dir.getParent());
            int r = Math.max(RANKS[k][0], RANKS[k][1]);
            Map<String, Object> json = new LinkedHashMap<>();
            json.put("peft_type", "LORA");
            json.put("r", r);
            json.put("lora_alpha", ALPHAS[k]);
            json.put("use_rslora", rsLora);
            json.put("target_modules", k == 1 ? List.of("q_proj", "up_proj", "v_proj") : List.of("q_proj", "up_proj"));
            if (k == 0) {
                json.put("alpha_pattern", Map.of("up_proj", 40));
            }
            PeftAdapter.write(dir, CliTest.tensors(RANKS[k], DType.F32, 200 + k), null,
                    AdapterConfig.of(json, "test"), Map.of("format", "pt"), r);
            paths.add(dir);
        }
        return paths;
    }

    static Stream<Arguments> cases() {
        List<Arguments> all = new ArrayList<>();
        // The factor-averaging strategies; SVD and STACK re-factorise, and their written scale is
        // checked by the product-space tests.
        for (Strategy s : List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM)) {
            for (String scale : List.of("none", "fold")) {
                for (boolean rs : List.of(false, true)) {
                    for (int rank : new int[] {0, 5, 10}) {
                        all.add(Arguments.of(s, scale, rs, rank));
                    }
                }
            }
        }
        return all.stream();
    }

    @ParameterizedTest(name = "{0} --scale {1} rslora={2} --rank {3}")
    @MethodSource("cases")
    void writtenScaleTimesBaIsWhatTheStrategyComputed(Strategy strategy, String scale, boolean rsLora, int rank)
            throws Exception {
        List<Path> clients = clients(rsLora);
        Path out = tmp.resolve("global");
        List<String> args = new ArrayList<>(List.of("aggregate", "--strategy", strategy.cliName(), "--scale", scale,
                "--rank", String.valueOf(rank), "-o", out.toString()));
        if (strategy != Strategy.NORM) {
            args.addAll(List.of("--weights", "1,2,3,4"));
        }
        clients.forEach(c -> args.add(c.toString()));
        CliTest.Run run = cli(args.toArray(String[]::new));
        assertEquals(0, run.status(), run.err());

        assertEquals("", run.err(), "quiet without --verbose");
        AdapterConfig written = AdapterConfig.read(out.resolve(PeftAdapter.CONFIG));
        assertEquals(rsLora, written.useRslora());
        for (String module : MODULES) {
            String name = PeftAdapter.baseModelName(module);
            double[][] meant = meant(clients, module, strategy, scale.equals("fold"), rank);
            double[][] actual = peftDelta(out, written, module);
            assertClose(meant, actual, module);
            assertTrue(TargetModules.matches(written.json().get("target_modules"), name),
                    "target_modules " + written.json().get("target_modules") + " selects " + name);
        }
    }

    /** Truncation keeps every kept component's scale: alpha' = alpha r'/r (rsLoRA: alpha sqrt(r'/r)). */
    @ParameterizedTest(name = "rslora={0}")
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void truncateKeepsTheScaleOfTheComponentsItKeeps(boolean rsLora) throws Exception {
        List<Path> clients = clients(rsLora);
        Path global = tmp.resolve("global");
        List<String> args = new ArrayList<>(List.of("aggregate", "--strategy", "replication", "--scale", "fold",
                "-o", global.toString()));
        clients.forEach(c -> args.add(c.toString()));
        assertEquals(0, cli(args.toArray(String[]::new)).status());
        AdapterConfig in = AdapterConfig.read(global.resolve(PeftAdapter.CONFIG));
        Path cut = tmp.resolve("cut");
        CliTest.Run run = cli("truncate", "--rank", "3", global.toString(), "-o", cut.toString());
        assertEquals(0, run.status(), run.err());
        AdapterConfig written = AdapterConfig.read(cut.resolve(PeftAdapter.CONFIG));
        Map<String, float[]> full = CliTest.read(global);
        Map<String, long[]> shapes = CliTest.shapes(global);
        for (String module : MODULES) {
            String name = PeftAdapter.baseModelName(module);
            long[] aShape = shapes.get(module + ".lora_A.weight");
            long[] bShape = shapes.get(module + ".lora_B.weight");
            int r = (int) aShape[0], n = (int) aShape[1], m = (int) bShape[0];
            double s = in.scaleFor(name, in.rankFor(name));
            assertEquals(r, in.rankFor(name), "the input config's rank for " + name);
            double[][] meant = product(full.get(module + ".lora_B.weight"), m, r,
                    full.get(module + ".lora_A.weight"), n, 3, s);
            assertClose(meant, peftDelta(cut, written, module), module);
        }
    }

    /** --verbose says when --scale none averages clients of different scales. */
    @Test
    void verboseSaysWhenTheClientsScalesDiffer() throws Exception {
        List<Path> clients = clients(false);
        List<String> args = new ArrayList<>(List.of("aggregate", "--verbose", "--strategy", "zero", "-o",
                tmp.resolve("g").toString()));
        clients.forEach(c -> args.add(c.toString()));
        CliTest.Run run = cli(args.toArray(String[]::new));
        assertEquals(0, run.status(), run.err());
        assertTrue(run.err().contains("the clients' LoRA scales differ") && run.err().contains("--scale fold"), run.err());
    }

    /** With --allow-missing the union of the clients' target modules is written, and covers every module. */
    @Test
    void allowMissingWritesTheUnionOfTargetModules() throws Exception {
        List<Path> clients = clients(false);
        // Client 2 without up_proj.
        Path lacking = tmp.resolve("lacking");
        Map<String, Tensor> t = CliTest.tensors(new int[] {3, 3}, DType.F32, 5);
        t.remove(MODULES[1] + ".lora_A.weight");
        t.remove(MODULES[1] + ".lora_B.weight");
        Map<String, Object> json = new LinkedHashMap<>();
        json.put("r", 3);
        json.put("lora_alpha", 6);
        json.put("target_modules", List.of("q_proj"));
        PeftAdapter.write(lacking, t, null, AdapterConfig.of(json, "t"), Map.of(), 3);
        Path out = tmp.resolve("g");
        CliTest.Run run = cli("aggregate", "--strategy", "zero", "--allow-missing", "-o", out.toString(),
                lacking.toString(), clients.get(1).toString());
        assertEquals(0, run.status(), run.err());
        AdapterConfig written = AdapterConfig.read(out.resolve(PeftAdapter.CONFIG));
        assertEquals(List.of("q_proj", "up_proj", "v_proj"), written.json().get("target_modules"),
                "first client's list, then what the others add");
    }

    /** A rank_pattern key that is a suffix of another module's name gets that module its own key. */
    @Test
    void patternKeysResolveEveryModuleToItsOwnValues() throws Exception {
        Map<String, Integer> ranks = new LinkedHashMap<>();
        ranks.put("q_proj", 4);             // a key "q_proj" would also match "layers.0.q_proj"
        ranks.put("layers.0.q_proj", 8);
        ranks.put("layers.1.q_proj", 8);
        Map<String, Double> scales = new LinkedHashMap<>();
        scales.put("q_proj", 2.0);
        scales.put("layers.0.q_proj", 0.5);
        scales.put("layers.1.q_proj", 0.5);
        AdapterConfig c = AdapterConfig.forOutput(null, 8, ranks, scales, false, null);
        ranks.forEach((module, r) -> {
            assertEquals(r, c.rankFor(module), module + " in " + c.toJson());
            assertEquals(scales.get(module), c.scaleFor(module, c.rankFor(module)), 1e-12, module + " in " + c.toJson());
        });
    }

    /**
     * The Java reader's PEFT rules against a separate rendering in Python of what PEFT does
     * (LoraModel: {@code get_pattern_key} takes the first key of rank_pattern / alpha_pattern, in
     * file order, that matches {@code (.*\.)?(key)$}; scale = alpha / r, or / sqrt(r)), on a config
     * whose keys are suffixes of other modules' names. Skipped without python3.
     */
    @Test
    void pythonRenderingOfPeftRulesAgrees() throws Exception {
        assumeTrue(CliSafetyTest.python(), "python3 not found: skipping the Python rendering of PEFT's rules");
        Map<String, Integer> ranks = new LinkedHashMap<>();
        ranks.put("q_proj", 4);
        ranks.put("layers.0.q_proj", 8);
        ranks.put("layers.1.q_proj", 8);
        ranks.put("model.layers.1.q_proj", 2);
        ranks.put("v_proj", 8);
        Map<String, Double> scales = new LinkedHashMap<>();
        scales.put("q_proj", 2.0);
        scales.put("layers.0.q_proj", 0.5);
        scales.put("layers.1.q_proj", 0.25);
        scales.put("model.layers.1.q_proj", 3.0);
        scales.put("v_proj", 0.5);
        for (boolean rs : new boolean[] {false, true}) {
            AdapterConfig c = AdapterConfig.forOutput(null, 8, ranks, scales, rs, null);
            Path file = Files.writeString(tmp.resolve("config-" + rs + ".json"), c.toJson());
            String script = String.join("\n",
                    "import json, math, re, sys",
                    "c = json.load(open(sys.argv[1]))",
                    "def key(patterns, name):",
                    "    for k in patterns:",
                    "        if re.match(r'(.*\\.)?(%s)$' % k, name):",
                    "            return k",
                    "    return None",
                    "for name in sys.argv[2:]:",
                    "    k = key(c.get('rank_pattern', {}), name)",
                    "    r = c['rank_pattern'][k] if k else c['r']",
                    "    k = key(c.get('alpha_pattern', {}), name)",
                    "    a = c['alpha_pattern'][k] if k else c['lora_alpha']",
                    "    s = a / math.sqrt(r) if c.get('use_rslora') else a / r",
                    "    print(name, r, repr(s))");
            List<String> command = new ArrayList<>(List.of("python3", "-c", script, file.toString()));
            command.addAll(ranks.keySet());
            Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
            String output = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
            assertEquals(0, p.waitFor(), output);
            List<String> lines = output.lines().toList();
            assertEquals(ranks.size(), lines.size(), output);
            for (String line : lines) {
                String[] f = line.split(" ");
                assertEquals(ranks.get(f[0]), Integer.parseInt(f[1]), "PEFT's rank for " + f[0] + " in " + c.toJson());
                assertEquals(scales.get(f[0]), Double.parseDouble(f[2]), 1e-12, "PEFT's scale for " + f[0] + " in " + c.toJson());
            }
        }
    }

    // ---- float64 rendering ----------------------------------------------------------------------

    /** What the strategy computed for one module, as the delta PEFT should apply (float64). */
    static double[][] meant(List<Path> clients, String module, Strategy strategy, boolean fold, int globalRank)
            throws Exception {
        List<double[][]> as = new ArrayList<>(), bs = new ArrayList<>();
        List<Double> weight = new ArrayList<>(), clientScale = new ArrayList<>(), dataWeight = new ArrayList<>();
        int n = 0, m = 0, maxRank = 0;
        for (int k = 0; k < clients.size(); k++) {
            try (PeftAdapter a = PeftAdapter.open(clients.get(k))) {
                Tensor ta = a.tensors().get(module + ".lora_A.weight");
                Tensor tb = a.tensors().get(module + ".lora_B.weight");
                int r = (int) ta.dim(0);
                n = (int) ta.dim(1);
                m = (int) tb.dim(0);
                maxRank = Math.max(maxRank, r);
                double[][] A = matrix(ta.toFloatArray(), r, n), B = matrix(tb.toFloatArray(), m, r);
                as.add(A);
                bs.add(B);
                double p = strategy == Strategy.NORM ? 1 : WEIGHTS[k];
                dataWeight.add(p);
                weight.add(strategy == Strategy.NORM ? frobenius(multiply(B, A)) : p);
                clientScale.add(a.config().scaleFor(PeftAdapter.baseModelName(module), r));
            }
        }
        int R = globalRank > 0 ? globalRank : maxRank;
        double[][] A = new double[R][n], B = new double[m][R];
        double total = weight.stream().mapToDouble(Double::doubleValue).sum();
        for (int i = 0; i < R; i++) {
            double owners = 0;
            for (int k = 0; k < as.size(); k++) {
                if (i < as.get(k).length) {
                    owners += weight.get(k);
                }
            }
            double divisor = strategy == Strategy.REPLICATION ? owners : total;
            if (owners == 0) {
                continue;
            }
            for (int k = 0; k < as.size(); k++) {
                if (i >= as.get(k).length) {
                    continue;
                }
                double w = weight.get(k) / divisor;
                double c = fold ? clientScale.get(k) : 1;
                for (int j = 0; j < n; j++) {
                    A[i][j] += w * as.get(k)[i][j];
                }
                for (int row = 0; row < m; row++) {
                    B[row][i] += w * c * bs.get(k)[row][i];
                }
            }
        }
        double[][] delta = multiply(B, A);
        if (!fold) {
            // The documented --scale none convention: the clients' data-weighted mean scale.
            double sum = 0, p = 0;
            for (int k = 0; k < as.size(); k++) {
                sum += dataWeight.get(k) * clientScale.get(k);
                p += dataWeight.get(k);
            }
            scaleInPlace(delta, sum / p);
        }
        return delta;
    }

    /** scale * B A of a written module, with scale from the written config by PEFT's rules. */
    static double[][] peftDelta(Path adapter, AdapterConfig config, String module) throws Exception {
        String name = PeftAdapter.baseModelName(module);
        try (PeftAdapter a = PeftAdapter.open(adapter)) {
            Tensor ta = a.tensors().get(module + ".lora_A.weight");
            Tensor tb = a.tensors().get(module + ".lora_B.weight");
            int r = (int) ta.dim(0);
            assertEquals(r, config.rankFor(name), "PEFT would build " + name + " at the config's rank");
            double scale = config.scaleFor(name, config.rankFor(name));
            return product(tb.toFloatArray(), (int) tb.dim(0), r, ta.toFloatArray(), (int) ta.dim(1), r, scale);
        }
    }

    /** scale * B[:, :keep] A[:keep, :] for row-major B (m x r) and A (r x n). */
    static double[][] product(float[] b, int m, int r, float[] a, int n, int keep, double scale) {
        double[][] out = new double[m][n];
        for (int i = 0; i < m; i++) {
            for (int c = 0; c < keep; c++) {
                double bv = b[i * r + c];
                for (int j = 0; j < n; j++) {
                    out[i][j] += bv * a[c * n + j];
                }
            }
        }
        scaleInPlace(out, scale);
        return out;
    }

    static double[][] matrix(float[] values, int rows, int cols) {
        double[][] out = new double[rows][cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                out[i][j] = values[i * cols + j];
            }
        }
        return out;
    }

    static double[][] multiply(double[][] b, double[][] a) {
        int m = b.length, r = a.length, n = r == 0 ? 0 : a[0].length;
        double[][] out = new double[m][n];
        for (int i = 0; i < m; i++) {
            for (int c = 0; c < r; c++) {
                for (int j = 0; j < n; j++) {
                    out[i][j] += b[i][c] * a[c][j];
                }
            }
        }
        return out;
    }

    static double frobenius(double[][] x) {
        double sum = 0;
        for (double[] row : x) {
            for (double v : row) {
                sum += v * v;
            }
        }
        return Math.sqrt(sum);
    }

    static void scaleInPlace(double[][] x, double s) {
        for (double[] row : x) {
            for (int j = 0; j < row.length; j++) {
                row[j] *= s;
            }
        }
    }

    static void assertClose(double[][] expected, double[][] actual, String what) {
        double largest = 0;
        for (double[] row : expected) {
            for (double v : row) {
                largest = Math.max(largest, Math.abs(v));
            }
        }
        assertTrue(largest > 0, what + ": a non-trivial expected delta");
        for (int i = 0; i < expected.length; i++) {
            for (int j = 0; j < expected[i].length; j++) {
                double err = Math.abs(expected[i][j] - actual[i][j]);
                if (err > 1e-5 * largest) {
                    throw new AssertionError(String.format(java.util.Locale.ROOT,
                            "%s [%d,%d]: PEFT would apply %.8g, the strategy computed %.8g (ratio %.6f)",
                            what, i, j, actual[i][j], expected[i][j], actual[i][j] / expected[i][j]));
                }
            }
        }
    }
}
