package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.product.FidelityReport;
import io.fedlora.product.Fill;
import io.fedlora.product.GramKernels;
import io.fedlora.product.Grams;
import io.fedlora.product.LowRank;
import io.fedlora.product.ModuleFactors;
import io.fedlora.product.ProductSpace;
import io.fedlora.product.Route;
import io.fedlora.product.ScalarGram;
import io.fedlora.product.Split;
import io.fedlora.product.VectorGram;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The product-space Gram kernels on the CUDA backend ({@link CudaGram}: cuBLAS Dsyrk/Dgemm, float64)
 * against the host ones: the Gram matrices equal to the scalar reference to float64 rounding, over
 * shapes of several panels (so a sum that restarted per panel, or read the wrong triangle, fails);
 * the SVD, the fidelity report and the facade's SVD aggregate equal to the vector backend's; a
 * failing driver or cuBLAS call reported as itself with no device memory left behind.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaGramTest {
    private final CudaKernels cuda = new CudaKernels();
    private final CudaGram gram = (CudaGram) ProductSpace.gramKernelsFor(cuda);
    private final ScalarGram scalar = new ScalarGram();

    @AfterAll
    void close() {
        cuda.close();
    }

    /** Random float32 factors: B [m, r], A [r, n], weights from {@code weights}. */
    static List<ModuleFactors> clients(long seed, int m, int n, int[] ranks, double[] weights) {
        SplittableRandom random = new SplittableRandom(seed);
        List<ModuleFactors> out = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            out.add(new ModuleFactors("client-" + k, Matrix.of(floats(random, ranks[k] * n), ranks[k], n),
                    Matrix.of(floats(random, m * ranks[k]), m, ranks[k]), weights[k], 1.0 + 0.25 * k));
        }
        return out;
    }

    static float[] floats(SplittableRandom random, int count) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return v;
    }

    /** 700 rows of B (panels of 256, 256, 188), 300 columns of A (256, 44); S = 25, not a multiple of anything. */
    private static final int M = 700, N = 300;
    private static final int[] RANKS = {3, 5, 8, 2, 7};
    private static final double[] WEIGHTS = {1, 2, 0.5, 3, 1};

    @Test
    void theBackendGetsTheCudaGramKernels() {
        assertEquals("cuda", gram.name());
        assertEquals(1, gram.maxParts());
        try (io.fedlora.kernels.cpu.VectorKernels vector = new io.fedlora.kernels.cpu.VectorKernels(1)) {
            assertEquals("vector", ProductSpace.gramKernelsFor(vector).name());
        }
        try (ScalarKernels host = new ScalarKernels()) {
            assertEquals("scalar", ProductSpace.gramKernelsFor(host).name());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new CudaGram(host));
            assertTrue(e.getMessage().contains("need the CUDA backend, got 'scalar'"), e.getMessage());
        }
    }

    /** |a - b| <= 1e-13 sqrt(G_pp G_qq): float64 sums of exact products, in different orders. */
    private static void assertGramEquals(double[] want, double[] got, int s, String what) {
        for (int p = 0; p < s; p++) {
            for (int q = 0; q < s; q++) {
                double bound = 1e-13 * Math.sqrt(Math.abs(want[p * s + p] * want[q * s + q])) + 1e-300;
                assertTrue(Math.abs(want[p * s + q] - got[p * s + q]) <= bound, what + " [" + p + ", " + q + "]: scalar "
                        + want[p * s + q] + ", cuda " + got[p * s + q]);
            }
        }
    }

    @Test
    void gramMatricesOverSeveralPanelsEqualTheScalarReference() {
        List<ModuleFactors> clients = clients(1, M, N, RANKS, WEIGHTS);
        try (ProductSpace host = new ProductSpace(scalar, 2); ProductSpace device = new ProductSpace(gram, 2)) {
            Grams want = host.grams("q", clients), got = device.grams("q", clients);
            int s = want.stackRank();
            assertGramEquals(want.gramB(), got.gramB(), s, "G_B");
            assertGramEquals(want.gramA(), got.gramA(), s, "G_A");
            for (int k = 0; k < RANKS.length; k++) {
                assertEquals(want.updateNorm(k), got.updateNorm(k), 1e-13 * want.updateNorm(k), "||B_k A_k|| of client " + k);
            }
        }
    }

    @Test
    void thePanelKernelsMatchScalarOnEveryShape() {
        SplittableRandom random = new SplittableRandom(14);
        for (int s : new int[] {1, 2, 7, 25, 97}) {
            for (int rows : new int[] {1, 7, 65, 300}) {
                double[] x = new double[rows * s + 3 * s]; // longer than the panel, as ProductSpace's buffers are
                for (int i = 0; i < x.length; i++) {
                    x[i] = (float) (random.nextDouble() * 2 - 1);
                }
                double[] g1 = new double[s * s], g2 = new double[s * s];
                for (int i = 0; i < g1.length; i++) {
                    g1[i] = g2[i] = random.nextDouble(); // syrkUpper adds to what is there
                }
                scalar.syrkUpper(g1, x, rows, s);
                gram.syrkUpper(g2, x, rows, s);
                for (int p = 0; p < s; p++) {
                    for (int q = p; q < s; q++) {
                        assertEquals(g1[p * s + q], g2[p * s + q], 1e-12 * (1 + Math.abs(g1[p * s + q])), "syrk s=" + s
                                + " rows=" + rows);
                    }
                }
                for (int t : new int[] {1, 5, 29}) {
                    double[] coef = new double[s * t];
                    for (int i = 0; i < coef.length; i++) {
                        coef[i] = random.nextDouble() * 2 - 1;
                    }
                    double[] o1 = new double[rows * t], o2 = new double[rows * t];
                    scalar.gemm(o1, x, rows, s, coef, t);
                    gram.gemm(o2, x, rows, s, coef, t);
                    assertArrayEquals(o1, o2, 1e-12 * s, "gemm s=" + s + " rows=" + rows + " t=" + t);
                }
            }
        }
    }

    @Test
    void gramsAreFloat64Accumulated() {
        // 1 + 2^-12 squared = 1 + 2^-11 + 2^-24: the last term is lost by a float32 (or TF32) sum.
        float x = 1 + 0x1p-12f;
        float[] b = new float[3];
        java.util.Arrays.fill(b, x);
        List<ModuleFactors> one = List.of(ModuleFactors.of("c", Matrix.of(new float[] {1}, 1, 1), Matrix.of(b, 3, 1), 1));
        try (ProductSpace device = new ProductSpace(gram, 2)) {
            assertEquals(3 * ((double) x * x), device.grams("g", one).gramB()[0], 0.0);
        }
    }

    /** Component-wise equality of two float32 factor arrays, relative to the array's largest entry. */
    private static void assertFactorsEqual(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what);
        double max = 0;
        for (float v : want) {
            max = Math.max(max, Math.abs(v));
        }
        for (int i = 0; i < want.length; i++) {
            if (Math.abs(want[i] - got[i]) > 2e-6 * max) {
                fail(what + "[" + i + "]: vector " + want[i] + ", cuda " + got[i]);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"flexlora", "balanced"})
    void svdOnTheDeviceEqualsTheVectorOne(String split) {
        List<ModuleFactors> clients = clients(2, M, N, RANKS, WEIGHTS);
        Split how = "flexlora".equals(split) ? Split.FLEXLORA : Split.BALANCED;
        try (ProductSpace host = new ProductSpace(new VectorGram(), 2); ProductSpace device = new ProductSpace(gram, 2)) {
            LowRank want = host.svd("q", clients, 6, how, 0.5, Fill.ORTH), got = device.svd("q", clients, 6, how, 0.5, Fill.ORTH);
            assertEquals(Route.GRAM, got.route());
            assertEquals(want.numericalRank(), got.numericalRank());
            for (int i = 0; i < want.numericalRank(); i++) {
                assertEquals(want.sigma()[i], got.sigma()[i], 1e-12 * want.sigma()[0], "sigma " + i);
            }
            assertEquals(want.normSquared(), got.normSquared(), 1e-12 * want.normSquared());
            assertFactorsEqual(want.b(), got.b(), "B");
            assertFactorsEqual(want.a(), got.a(), "A");
        }
    }

    /** Two modules (700 x 300, 300 x 40) of five clients of ranks 3-8. */
    static List<ClientUpdate> updates(long seed) {
        String q = "base_model.model.layers.0.self_attn.q_proj", v = "base_model.model.layers.0.self_attn.v_proj";
        List<ModuleFactors> fq = clients(seed, M, N, RANKS, WEIGHTS), fv = clients(seed + 1, N, 40, RANKS, WEIGHTS);
        List<ClientUpdate> out = new ArrayList<>();
        for (int k = 0; k < RANKS.length; k++) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            put(t, q, fq.get(k));
            put(t, v, fv.get(k));
            out.add(ClientUpdate.of("client-" + k, WEIGHTS[k], t));
        }
        return out;
    }

    private static void put(Map<String, Tensor> t, String module, ModuleFactors f) {
        t.put(module + ".lora_A.weight", Tensor.of(copy(f.a()), f.a().rows(), f.a().cols()));
        t.put(module + ".lora_B.weight", Tensor.of(copy(f.b()), f.b().rows(), f.b().cols()));
    }

    private static float[] copy(Matrix x) {
        float[] v = new float[x.rows() * x.cols()];
        for (int i = 0; i < x.rows(); i++) {
            for (int j = 0; j < x.cols(); j++) {
                v[i * x.cols() + j] = x.get(i, j);
            }
        }
        return v;
    }

    @Test
    void anSvdAggregateOnCudaEqualsTheVectorBackends() {
        List<ClientUpdate> clients = updates(3);
        Map<String, Tensor> want, got;
        try (Aggregator vector = Aggregator.builder().strategy(Strategy.SVD).globalRank(6).backend("vector").build();
                Aggregator device = Aggregator.builder().strategy(Strategy.SVD).globalRank(6).kernels(cuda).build()) {
            assertEquals("cuda", device.backendName());
            want = vector.aggregate(clients);
            got = device.aggregate(clients);
        }
        assertEquals(want.keySet(), got.keySet());
        for (String key : want.keySet()) {
            assertArrayEquals(want.get(key).shape(), got.get(key).shape(), key);
            assertFactorsEqual(want.get(key).toFloatArray(), got.get(key).toFloatArray(), key);
        }
    }

    @Test
    void theFidelityReportOnCudaEqualsTheVectorBackends() {
        List<ClientUpdate> clients = updates(4);
        List<Strategy> strategies = List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.SVD, Strategy.STACK);
        FidelityReport want, got;
        try (Aggregator vector = Aggregator.builder().globalRank(6).backend("vector").build();
                Aggregator device = Aggregator.builder().globalRank(6).kernels(cuda).build()) {
            want = vector.fidelity(clients, strategies);
            got = device.fidelity(clients, strategies);
        }
        assertEquals(want.modules().size(), got.modules().size());
        for (int i = 0; i < want.modules().size(); i++) {
            FidelityReport.Row w = want.modules().get(i), g = got.modules().get(i);
            String what = w.module() + " " + w.strategy();
            assertEquals(w.strategy(), g.strategy(), what);
            // DESIGN §9's fidelity tolerance (|e' - e| <= 1e-3 e + 1e-8), far tighter here: both float64 from the same data.
            assertEquals(w.exact(), g.exact(), 1e-9 * w.exact() + 1e-12, what + " against dW*");
            assertEquals(w.rankAware(), g.rankAware(), 1e-9 * w.rankAware() + 1e-12, what + " rank-aware");
            for (int r = 0; r < w.clientRanks().length; r++) {
                assertEquals(w.exactAt(r), g.exactAt(r), 1e-9 * w.exactAt(r) + 1e-12, what + " at rank " + w.clientRanks()[r]);
            }
        }
    }

    /** How many times {@code call} runs in {@code work}, counted by the failure injection's countdown (armed far ahead). */
    private static int countCalls(String call, Runnable work) {
        int armed = 1_000_000, left;
        Emulator.fail(call, armed);
        try {
            work.run();
        } finally {
            left = Emulator.fail(call, 0);
        }
        assertTrue(left > 0, call + ": the counting failure fired");
        return armed - left;
    }

    @Test
    void eachGramIsDownloadedOnceAndEachPanelUploadedOnce() {
        assumeTrue(Emulator.present(), "call counting uses the emulator's failure injection");
        List<ModuleFactors> clients = clients(6, M, N, RANKS, WEIGHTS);
        try (ProductSpace device = new ProductSpace(gram, 2)) {
            Runnable grams = () -> device.grams("q", clients);
            // G_B: 700 rows in 3 panels, G_A: 300 columns in 2; one sum each, zeroed once, read back once.
            assertEquals(2, countCalls("cuMemcpyDtoH", grams), "downloads of the two Gram matrices");
            assertEquals(5, countCalls("cuMemcpyHtoD", grams), "uploads: one per panel, never the sum");
            assertEquals(5, countCalls("cublasDsyrk", grams), "one SYRK per panel");
            assertEquals(2, countCalls("cuMemsetD32Async", grams), "each sum zeroed once");
            // An SVD adds two products (U: 3 panels, V: 2), each result read back once, its coefficients sent once.
            Runnable svd = () -> device.svd("q", clients, 6, Split.FLEXLORA, 1, Fill.ORTH);
            assertEquals(4, countCalls("cuMemcpyDtoH", svd), "downloads: two Grams, two products");
            assertEquals(5 + 2 + 5, countCalls("cuMemcpyHtoD", svd), "uploads: panels twice, coefficients once each");
            assertEquals(5, countCalls("cublasDgemm", svd), "one GEMM per panel");
        }
    }

    private static final List<String> CALLS = List.of("cuMemAlloc", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemsetD32Async",
            "cublasDsyrk", "cublasDgemm");

    /**
     * Every driver and cuBLAS call of a Gram-route SVD (two Gram sums, two products) made to fail
     * in turn: the error names the call, no device memory is left, and the next SVD is unchanged.
     */
    @Test
    void aFailingCallLeavesNoDeviceMemoryAndIsTheErrorReported() {
        assumeTrue(Emulator.present(), "failure injection is the emulator's");
        List<ModuleFactors> clients = clients(5, M, N, RANKS, WEIGHTS);
        try (ProductSpace device = new ProductSpace(gram, 2)) {
            LowRank want = device.svd("q", clients, 6, Split.FLEXLORA, 1, Fill.ORTH);
            int baseline = Emulator.liveObjects();
            List<String> failed = new ArrayList<>();
            for (String call : CALLS) {
                for (int nth = 1; ; nth++) {
                    Emulator.fail(call, nth);
                    RuntimeException thrown = null;
                    try {
                        device.svd("q", clients, 6, Split.FLEXLORA, 1, Fill.ORTH);
                    } catch (RuntimeException e) {
                        thrown = e;
                    }
                    boolean fired = Emulator.fail(call, 0) == 0;
                    assertEquals(baseline, Emulator.liveObjects(), "call " + nth + " of " + call + " failing left objects behind");
                    if (!fired) {
                        assertEquals(null, thrown, "the SVD threw though no call failed");
                        break;
                    }
                    if (thrown == null) {
                        fail("the SVD ignored the failure of call " + nth + " of " + call);
                    }
                    assertTrue(thrown.getMessage().contains(call), "call " + nth + " of " + call + " failed, but the error is: "
                            + thrown);
                    failed.add(call + "#" + nth);
                }
            }
            // 2 Gram sums (G_B: 3 panels, G_A: 2) and 2 products: allocations, uploads, memsets, 5 SYRKs, 5 GEMMs.
            assertTrue(failed.contains("cublasDsyrk#5") && failed.contains("cublasDgemm#5") && failed.contains("cuMemAlloc#8"),
                    "too few calls failed: " + failed);
            LowRank again = device.svd("q", clients, 6, Split.FLEXLORA, 1, Fill.ORTH);
            assertArrayEquals(want.b(), again.b(), "B after the injected failures " + failed);
            assertArrayEquals(want.a(), again.a(), "A after the injected failures " + failed);
        }
    }

    @Test
    void aClosedSumRefusesAndAnOpenOneHoldsItsMemoryUntilClosed() {
        assumeTrue(Emulator.present(), "the live-object count is the emulator's");
        int baseline = Emulator.liveObjects();
        GramKernels.GramSum sum = gram.openGram(4);
        sum.add(new double[8], 2);
        assertEquals(baseline + 2, Emulator.liveObjects(), "the Gram sum and its panel");
        sum.close();
        sum.close();
        assertEquals(baseline, Emulator.liveObjects());
        IllegalStateException e = assertThrows(IllegalStateException.class, sum::upper);
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
    }
}
