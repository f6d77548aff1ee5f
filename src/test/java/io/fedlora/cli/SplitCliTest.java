package io.fedlora.cli;

import static io.fedlora.cli.CliTest.MODULES;
import static io.fedlora.cli.CliTest.cli;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.Tensor;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * {@code aggregate --strategy svd --split flexlora|balanced}: the balanced adapter has balanced
 * factors, the same adapter_config.json as the FlexLoRA one and the same delta as PEFT applies it;
 * a bad value and {@code --split} with another strategy are usage errors (exit 2) of one line.
 */
class SplitCliTest {

    @TempDir
    Path tmp;

    private List<Path> clients() throws Exception {
        ConfigScaleTest fixtures = new ConfigScaleTest();
        fixtures.tmp = tmp;
        return fixtures.clients(false);
    }

    private static CliTest.Run aggregate(List<Path> clients, Path out, String... options) {
        List<String> args = new ArrayList<>(List.of("aggregate", "--weights", "1,2,3,4", "-o", out.toString()));
        args.addAll(List.of(options));
        clients.forEach(c -> args.add(c.toString()));
        return cli(args.toArray(String[]::new));
    }

    @ParameterizedTest(name = "--scale {0}")
    @ValueSource(strings = {"none", "fold"})
    void balancedWritesTheSameDeltaAndConfigWithBalancedFactors(String scale) throws Exception {
        List<Path> clients = clients();
        Path flex = tmp.resolve("flex"), bal = tmp.resolve("balanced"), named = tmp.resolve("named");
        CliTest.Run f = aggregate(clients, flex, "--strategy", "svd", "--scale", scale);
        CliTest.Run b = aggregate(clients, bal, "--strategy", "svd", "--scale", scale, "--split", "balanced");
        CliTest.Run n = aggregate(clients, named, "--strategy", "svd", "--scale", scale, "--split", "FlexLoRA");
        assertEquals(0, f.status(), f.err());
        assertEquals(0, b.status(), b.err());
        assertEquals(0, n.status(), n.err());
        assertTrue(b.out().contains("svd (balanced split)"), b.out());
        assertFalse(f.out().contains("balanced"), f.out());
        assertEquals(Files.readString(flex.resolve(PeftAdapter.CONFIG)), Files.readString(bal.resolve(PeftAdapter.CONFIG)),
                "the split changes the factors, not the config's scale");
        AdapterConfig config = AdapterConfig.read(bal.resolve(PeftAdapter.CONFIG));
        try (PeftAdapter fa = PeftAdapter.open(flex); PeftAdapter ba = PeftAdapter.open(bal);
                PeftAdapter na = PeftAdapter.open(named)) {
            for (String module : MODULES) {
                ConfigScaleTest.assertClose(ConfigScaleTest.peftDelta(flex, config, module),
                        ConfigScaleTest.peftDelta(bal, config, module), module);
                Tensor a = ba.tensors().get(module + ".lora_A.weight"), bt = ba.tensors().get(module + ".lora_B.weight");
                Tensor a0 = fa.tensors().get(module + ".lora_A.weight");
                int r = (int) a.dim(0), in = (int) a.dim(1), out = (int) bt.dim(0);
                float[] av = a.toFloatArray(), bv = bt.toFloatArray(), a0v = a0.toFloatArray();
                for (int i = 0; i < r; i++) {
                    double na2 = 0, nb2 = 0, n0 = 0;
                    for (int c = 0; c < in; c++) {
                        na2 += (double) av[i * in + c] * av[i * in + c];
                        n0 += (double) a0v[i * in + c] * a0v[i * in + c];
                    }
                    for (int row = 0; row < out; row++) {
                        nb2 += (double) bv[row * r + i] * bv[row * r + i];
                    }
                    if (nb2 == 0) {
                        continue; // past the numerical rank: zero B, unit A row, in both splits
                    }
                    assertEquals(Math.sqrt(nb2), Math.sqrt(na2), 1e-5 * Math.sqrt(na2), module + " component " + i);
                    assertEquals(1, n0, 1e-5, module + ": the default split's A rows are unit vectors");
                }
                assertTrue(java.util.Arrays.equals(a0v, na.tensors().get(module + ".lora_A.weight").toFloatArray()),
                        "--split flexlora is the default");
            }
        }
    }

    /**
     * The fidelity report beside a balanced aggregation (computed without the split) is the dense
     * float64 error of the balanced factors written, at the global rank and truncated to each
     * client rank: the split does not change the figures.
     */
    @Test
    void theReportOfABalancedGlobalIsItsDenseError() throws Exception {
        List<Path> clients = clients();
        Path out = tmp.resolve("balanced"), report = tmp.resolve("report.json");
        CliTest.Run run = aggregate(clients, out, "--strategy", "svd", "--split", "balanced", "--backend", "scalar",
                "--report", report.toString());
        assertEquals(0, run.status(), run.err());
        com.fasterxml.jackson.databind.JsonNode json = new com.fasterxml.jackson.databind.ObjectMapper()
                .readTree(Files.readString(report));
        int checked = 0;
        try (PeftAdapter global = PeftAdapter.open(out)) {
            for (String module : MODULES) {
                double[][] target = null;
                double total = 0;
                for (int k = 0; k < clients.size(); k++) {
                    try (PeftAdapter a = PeftAdapter.open(clients.get(k))) {
                        Tensor ta = a.tensors().get(module + ".lora_A.weight");
                        Tensor tb = a.tensors().get(module + ".lora_B.weight");
                        int r = (int) ta.dim(0);
                        double[][] ba = ConfigScaleTest.product(tb.toFloatArray(), (int) tb.dim(0), r, ta.toFloatArray(),
                                (int) ta.dim(1), r, ConfigScaleTest.WEIGHTS[k]);
                        total += ConfigScaleTest.WEIGHTS[k];
                        if (target == null) {
                            target = ba;
                        } else {
                            for (int i = 0; i < ba.length; i++) {
                                for (int j = 0; j < ba[i].length; j++) {
                                    target[i][j] += ba[i][j];
                                }
                            }
                        }
                    }
                }
                ConfigScaleTest.scaleInPlace(target, 1 / total);
                Tensor a = global.tensors().get(module + ".lora_A.weight"), b = global.tensors().get(module + ".lora_B.weight");
                int rank = (int) a.dim(0);
                for (com.fasterxml.jackson.databind.JsonNode row : json.get("modules")) {
                    if (!row.get("strategy").asText().equals("svd") || !module.endsWith(row.get("module").asText())) {
                        continue;
                    }
                    List<int[]> at = new ArrayList<>(List.of(new int[] {rank, -1}));
                    for (int i = 0; i < row.get("truncated").size(); i++) {
                        at.add(new int[] {row.get("truncated").get(i).get("rank").asInt(), i});
                    }
                    for (int[] ri : at) {
                        int keep = Math.min(ri[0], rank);
                        double[][] diff = ConfigScaleTest.product(b.toFloatArray(), (int) b.dim(0), rank, a.toFloatArray(),
                                (int) a.dim(1), keep, 1);
                        for (int i = 0; i < diff.length; i++) {
                            for (int j = 0; j < diff[i].length; j++) {
                                diff[i][j] = target[i][j] - diff[i][j];
                            }
                        }
                        double dense = ConfigScaleTest.frobenius(diff) / ConfigScaleTest.frobenius(target);
                        double reported = (ri[1] < 0 ? row : row.get("truncated").get(ri[1])).get("error_exact").asDouble();
                        // Float32 factors move the error by about 1e-7 (u of the written product), far below this bound.
                        assertEquals(reported, dense, 1e-5 * reported + 2e-6, module + " at rank " + ri[0]);
                        checked++;
                    }
                }
            }
        }
        assertTrue(checked >= 2 * MODULES.length, "rows checked: " + checked);
    }

    @Test
    void badValueAndOtherStrategiesAreUsageErrors() throws Exception {
        List<Path> clients = clients();
        CliTest.Run bad = aggregate(clients, tmp.resolve("x"), "--strategy", "svd", "--split", "diagonal");
        assertEquals(2, bad.status(), bad.err());
        String first = bad.err().lines().findFirst().orElse("");
        assertTrue(first.contains("--split") && first.contains("'diagonal' is not one of flexlora, balanced"), bad.err());
        for (String strategy : List.of("zero", "replication", "norm", "stack")) {
            CliTest.Run other = aggregate(clients, tmp.resolve("y"), "--strategy", strategy, "--split", "flexlora");
            assertEquals(2, other.status(), other.err());
            assertTrue(other.err().lines().findFirst().orElse("").contains("--split applies to --strategy svd only; "
                    + strategy + " has no factorisation to split"), other.err());
            assertFalse(Files.exists(tmp.resolve("y")), "nothing written");
        }
        CliTest.Run help = cli("aggregate", "--help");
        assertEquals(0, help.status());
        assertTrue(help.out().contains("--split=flexlora|balanced") && help.out().contains("svd|stack"), help.out());
    }
}
