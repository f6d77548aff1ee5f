package io.fedlora.product;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.InvalidUpdateException;
import io.fedlora.LoraScale;
import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.ejml.data.DMatrixRMaj;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * SVD and STACK through the facade ({@link Aggregator}), and its fidelity report held against the
 * dense float64 error of the globals the facade actually wrote (float32), on every backend the
 * tests run (scalar, vector).
 */
class ProductFacadeTest {

    private static final String Q = "base_model.model.layers.0.self_attn.q_proj";
    private static final String V = "base_model.model.layers.0.self_attn.v_proj";
    private static final int M = 48, N = 40;

    /** Clients with modules Q (m x n) and V (n x m... here m x n too), ranks from {@code ranks}. */
    private static List<ClientUpdate> updates(int[] ranks, double[] weights, long seed) {
        List<ModuleFactors> q = Dense64.clients(seed, M, N, ranks, weights, null);
        List<ModuleFactors> v = Dense64.clients(seed + 1, N, M, ranks, weights, null);
        List<ClientUpdate> out = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            put(t, Q, q.get(k));
            put(t, V, v.get(k));
            out.add(ClientUpdate.of("client-" + k, weights[k], t));
        }
        return out;
    }

    private static void put(Map<String, Tensor> t, String module, ModuleFactors f) {
        t.put(module + ".lora_A.weight", Tensor.of(floats(f.a()), f.a().rows(), f.a().cols()));
        t.put(module + ".lora_B.weight", Tensor.of(floats(f.b()), f.b().rows(), f.b().cols()));
    }

    private static float[] floats(Matrix x) {
        float[] v = new float[x.rows() * x.cols()];
        for (int i = 0; i < x.rows(); i++) {
            for (int j = 0; j < x.cols(); j++) {
                v[i * x.cols() + j] = x.get(i, j);
            }
        }
        return v;
    }

    /** One module of the updates as ModuleFactors, with a LoRA scale per client when given. */
    private static List<ModuleFactors> module(List<ClientUpdate> updates, String module, LoraScale scale) {
        List<ModuleFactors> out = new ArrayList<>();
        for (ClientUpdate u : updates) {
            Tensor a = u.tensors().get(module + ".lora_A.weight"), b = u.tensors().get(module + ".lora_B.weight");
            int r = (int) a.dim(0);
            out.add(new ModuleFactors(u.clientId(), Matrix.dense(a.data(), a.dtype(), r, (int) a.dim(1)),
                    Matrix.dense(b.data(), b.dtype(), (int) b.dim(0), r), u.weight(),
                    scale == null ? 1 : scale.of(module, r)));
        }
        return out;
    }

    private static Aggregator aggregator(String backend, Policy policy) {
        return Aggregator.builder().policy(policy).backend(backend).build();
    }

    private static DMatrixRMaj product(Map<String, Tensor> global, String module, double scale) {
        Tensor a = global.get(module + ".lora_A.weight"), b = global.get(module + ".lora_B.weight");
        return Dense64.product(b.toFloatArray(), a.toFloatArray(), (int) b.dim(0), (int) a.dim(0), (int) a.dim(1), scale);
    }

    @ParameterizedTest
    @ValueSource(strings = {"scalar", "vector"})
    void svdIsTheBestRankRApproximationAndTruncationRedistributes(String backend) {
        int[] ranks = {2, 4, 8, 6};
        List<ClientUpdate> updates = updates(ranks, new double[] {1, 3, 2, 1}, 21);
        try (Aggregator agg = aggregator(backend, Policy.of(Strategy.SVD))) {
            Map<String, Tensor> global = agg.aggregate(updates);
            for (String module : List.of(Q, V)) {
                DMatrixRMaj exact = Dense64.exactAverage(module(updates, module, null));
                Dense64.Svd ref = Dense64.svd(exact);
                assertEquals(8, global.get(module + ".lora_A.weight").dim(0));
                double err = Dense64.relative(product(global, module, 1), ref.truncated(8), exact);
                assertTrue(err < 2e-6, module + ": " + err);
                // FlexLoRA redistribution: Aggregator.truncate gives each client its best rank-r part.
                for (int r : ranks) {
                    Map<String, Tensor> mine = Aggregator.truncate(global, r);
                    double e = Dense64.relative(product(mine, module, 1), ref.truncated(r), exact);
                    assertTrue(e < 2e-6, module + " truncated to " + r + ": " + e);
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"scalar", "vector"})
    void svdAndStackWithFoldedScales(String backend) {
        int[] ranks = {4, 8, 16};
        LoraScale scale = LoraScale.alphaOverRank(16);
        List<ClientUpdate> updates = new ArrayList<>();
        for (ClientUpdate u : updates(ranks, new double[] {2, 1, 1}, 22)) {
            updates.add(u.withScale(scale));
        }
        Policy fold = Policy.of(Strategy.SVD).withFoldScale(scale).withGlobalRank(12);
        try (Aggregator svd = aggregator(backend, fold);
                Aggregator stack = aggregator(backend, new Policy(Strategy.STACK, 0, false, scale))) {
            Map<String, Tensor> g = svd.aggregate(updates);
            Map<String, Tensor> st = stack.aggregate(updates);
            for (String module : List.of(Q, V)) {
                DMatrixRMaj exact = Dense64.exactAverage(module(updates, module, scale));
                // Applied as PEFT applies it: the global scale at the global rank.
                double err = Dense64.relative(product(g, module, 16.0 / 12), Dense64.svd(exact).truncated(12), exact);
                assertTrue(err < 2e-6, "svd " + module + ": " + err);
                assertEquals(28, st.get(module + ".lora_A.weight").dim(0), "STACK has rank sum r_k");
                double e = Dense64.error(exact, product(st, module, 16.0 / 28));
                assertTrue(e < 1e-6, "stack " + module + ": " + e);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"scalar", "vector"})
    void fidelityReportMatchesTheDenseErrorOfTheWrittenGlobals(String backend) {
        int[] ranks = {5, 5, 5, 20, 9};
        double[] weights = {1, 1, 2, 1, 3};
        List<ClientUpdate> updates = updates(ranks, weights, 23);
        List<Strategy> all = List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM, Strategy.SVD, Strategy.STACK);
        try (Aggregator reporter = aggregator(backend, Policy.of(Strategy.ZERO).withGlobalRank(12))) {
            FidelityReport report = reporter.fidelity(updates, all);
            double[] num = new double[all.size()], den = new double[all.size()];
            for (Strategy s : all) {
                try (Aggregator agg = aggregator(backend, Policy.of(s).withGlobalRank(12))) {
                    Map<String, Tensor> global = agg.aggregate(updates);
                    for (String module : List.of(Q, V)) {
                        List<ModuleFactors> f = module(updates, module, null);
                        DMatrixRMaj exact = Dense64.exactAverage(f), rankAware = Dense64.rankAwareAverage(f);
                        DMatrixRMaj out = product(global, module, 1);
                        FidelityReport.Row row = report.modules().stream()
                                .filter(r -> r.module().equals(module) && r.strategy().equals(s.cliName())).findFirst()
                                .orElseThrow();
                        // The report is of the exact-arithmetic aggregate; the written one is float32.
                        double want = Dense64.error(exact, out);
                        assertTrue(Math.abs(row.exact() - want) <= 1e-3 * want + 1e-6,
                                s + " " + module + " vs dW*: dense " + want + ", report " + row.exact());
                        double wantRa = Dense64.error(rankAware, out);
                        assertTrue(Math.abs(row.rankAware() - wantRa) <= 1e-3 * wantRa + 1e-6,
                                s + " " + module + " vs dW_ra: dense " + wantRa + ", report " + row.rankAware());
                        int i = s.ordinal();
                        double d = org.ejml.dense.row.NormOps_DDRM.normF(exact);
                        den[i] += d * d;
                        num[i] += want * want * d * d;
                    }
                }
            }
            for (Strategy s : all) {
                double overall = Math.sqrt(num[s.ordinal()] / den[s.ordinal()]);
                assertEquals(overall, report.overall(s.cliName()).exact(), 1e-3 * overall + 1e-6, s + " overall");
            }
            assertEquals(0.0, report.overall("stack").exact(), "STACK is exact");
            assertTrue(report.overall("svd").exact() < report.overall("zero").exact());
            assertTrue(report.overall("replication").rankAware() < report.overall("zero").rankAware(),
                    "replication estimates the rank-aware average");
            String json = report.toJson();
            assertTrue(json.contains("\"strategy\" : \"svd\"") && json.contains("\"truncated\""), json);
            assertTrue(report.toText().contains("replication"));
        }
    }

    @Test
    void badValuesAreRefused() {
        try (Aggregator agg = Aggregator.of(Policy.of(Strategy.SVD))) {
            List<ClientUpdate> updates = updates(new int[] {2, 3}, new double[] {1, 1}, 24);
            float[] bad = updates.get(1).tensors().get(Q + ".lora_B.weight").toFloatArray();
            bad[7] = Float.NaN;
            Map<String, Tensor> t = new LinkedHashMap<>(updates.get(1).tensors());
            t.put(Q + ".lora_B.weight", Tensor.of(bad, M, 3));
            List<ClientUpdate> withNaN = List.of(updates.get(0), ClientUpdate.of("client-1", 1, t));
            InvalidUpdateException x = assertThrows(InvalidUpdateException.class, () -> agg.aggregate(withNaN));
            assertTrue(x.getMessage().contains("client-1") && x.getMessage().contains("q_proj")
                    && x.getMessage().contains("NaN"), x.getMessage());
        }
        assertEquals(Strategy.SVD, Strategy.parse("svd"));
        assertEquals(Strategy.STACK, Strategy.parse("Stack"));
    }
}
