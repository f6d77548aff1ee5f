package io.fedlora;

import io.fedlora.tensor.DType;

import io.fedlora.tensor.Tensor;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestClients.Shape;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/** DESIGN §2 through the facade: hand-computed cases, identities, and float64 on every backend. */
class StrategyTest {

    static final String M = "model.layers.0.q_proj";

    /** Client 1: rank 2, weight 1; client 2: rank 4, weight 3; in = out = 2 (values chosen to be exact). */
    static List<ClientUpdate> rank2And4() {
        Map<String, Tensor> small = new LinkedHashMap<>();
        small.put(M + ".lora_A.weight", Tensor.of(new float[] {1, 1, 2, 2}, 2, 2));
        small.put(M + ".lora_B.weight", Tensor.of(new float[] {1, 2, 1, 2}, 2, 2));
        Map<String, Tensor> large = new LinkedHashMap<>();
        large.put(M + ".lora_A.weight", Tensor.of(new float[] {3, 3, 4, 4, 5, 5, 6, 6}, 4, 2));
        large.put(M + ".lora_B.weight", Tensor.of(new float[] {3, 4, 5, 6, 3, 4, 5, 6}, 2, 4));
        return List.of(ClientUpdate.of("small", 1, small), ClientUpdate.of("large", 3, large));
    }

    static Map<String, Tensor> run(Strategy strategy, int rank, List<ClientUpdate> clients) {
        try (Aggregator aggregator = Aggregator.builder().strategy(strategy).globalRank(rank).backend("scalar").build()) {
            return aggregator.aggregate(clients);
        }
    }

    @Test
    void zeroPaddingDilutesTheHighRankComponents() {
        Map<String, Tensor> g = run(Strategy.ZERO, 0, rank2And4());
        // Components 0, 1: (1*x1 + 3*x2) / 4; components 2, 3 only the large client has: 3*x2 / 4.
        assertArrayEquals(new float[] {2.5f, 2.5f, 3.5f, 3.5f, 3.75f, 3.75f, 4.5f, 4.5f},
                g.get(M + ".lora_A.weight").toFloatArray());
        assertArrayEquals(new float[] {2.5f, 3.5f, 3.75f, 4.5f, 2.5f, 3.5f, 3.75f, 4.5f},
                g.get(M + ".lora_B.weight").toFloatArray());
    }

    @Test
    void replicationKeepsTheHighRankComponents() {
        Map<String, Tensor> g = run(Strategy.REPLICATION, 0, rank2And4());
        // Components 2, 3 are divided by their owners' weight (3), so they keep their size.
        assertArrayEquals(new float[] {2.5f, 2.5f, 3.5f, 3.5f, 5, 5, 6, 6}, g.get(M + ".lora_A.weight").toFloatArray());
        assertArrayEquals(new float[] {2.5f, 3.5f, 5, 6, 2.5f, 3.5f, 5, 6}, g.get(M + ".lora_B.weight").toFloatArray());
    }

    @Test
    void normWeightsClientsByTheirUpdateNorm() {
        // B1 A1 is all 5s (2 x 2): norm 10. B2 A2 is all 3*3 + 4*4 + 5*5 + 6*6 = 86: norm 172.
        Map<String, Tensor> g = run(Strategy.NORM, 0, rank2And4());
        float[] a = g.get(M + ".lora_A.weight").toFloatArray();
        assertEquals((10 * 1 + 172 * 3) / 182.0, a[0], 1e-6);
        assertEquals((10 * 2 + 172 * 4) / 182.0, a[2], 1e-6);
        assertEquals(172 * 5 / 182.0, a[4], 1e-6);
        assertEquals(172 * 6 / 182.0, a[7], 1e-6);
    }

    @Test
    void globalRankBelowAndAboveTheClientRanks() {
        Map<String, Tensor> cut = run(Strategy.REPLICATION, 3, rank2And4());
        assertArrayEquals(new long[] {3, 2}, cut.get(M + ".lora_A.weight").shape());
        assertArrayEquals(new float[] {2.5f, 2.5f, 3.5f, 3.5f, 5, 5}, cut.get(M + ".lora_A.weight").toFloatArray());
        assertArrayEquals(new float[] {2.5f, 3.5f, 5, 2.5f, 3.5f, 5}, cut.get(M + ".lora_B.weight").toFloatArray());
        Map<String, Tensor> wide = run(Strategy.ZERO, 6, rank2And4());
        // Components 4 and 5 belong to nobody: zero.
        assertArrayEquals(new float[] {2.5f, 2.5f, 3.5f, 3.5f, 3.75f, 3.75f, 4.5f, 4.5f, 0, 0, 0, 0},
                wide.get(M + ".lora_A.weight").toFloatArray());
        assertArrayEquals(new float[] {2.5f, 3.5f, 3.75f, 4.5f, 0, 0, 2.5f, 3.5f, 3.75f, 4.5f, 0, 0},
                wide.get(M + ".lora_B.weight").toFloatArray());
    }

    @Test
    void normUsesTheWholeUpdateEvenWhenTheRankIsCut() {
        // With R = 2 the large client's components 2, 3 are dropped, but its weight is still 172.
        float[] a = run(Strategy.NORM, 2, rank2And4()).get(M + ".lora_A.weight").toFloatArray();
        assertEquals((10 * 1 + 172 * 3) / 182.0, a[0], 1e-6);
    }

    @Test
    void replicationEqualsPaddingWithTheOwnerWeightedMeanThenAveraging() {
        List<Shape> shapes = List.of(new Shape("m0", 37, 53), new Shape("m1", 64, 17));
        List<ClientUpdate> clients = TestClients.clients(new int[] {2, 7, 3, 7, 1, 5}, shapes, DType.F32, 99);
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.REPLICATION).backend("scalar").build()) {
            Map<String, Tensor> global = aggregator.aggregate(clients);
            for (Shape s : shapes) {
                for (Aggregator.Factor factor : Aggregator.Factor.values()) {
                    String key = s.module() + (factor == Aggregator.Factor.A ? ".lora_A.weight" : ".lora_B.weight");
                    Tensor donor = global.get(key);
                    int rank = (int) (factor == Aggregator.Factor.A ? donor.dim(0) : donor.dim(1));
                    double[] mean = new double[(int) donor.elementCount()];
                    double total = 0;
                    for (ClientUpdate c : clients) {
                        Tensor padded = aggregator.padReplicate(c.tensors().get(key), factor, rank, donor);
                        for (int i = 0; i < mean.length; i++) {
                            mean[i] += c.weight() * padded.get(i);
                        }
                        total += c.weight();
                    }
                    for (int i = 0; i < mean.length; i++) {
                        assertEquals(mean[i] / total, donor.get(i), 1e-5, key + " element " + i);
                    }
                }
            }
        }
    }

    @Test
    void padZeroThenAveragingIsZeroStrategy() {
        List<Shape> shapes = List.of(new Shape("m", 11, 13));
        List<ClientUpdate> clients = TestClients.clients(new int[] {1, 4, 2}, shapes, DType.F32, 5);
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.ZERO).backend("scalar").build()) {
            Tensor global = aggregator.aggregate(clients).get("m.lora_B.weight");
            double total = 0;
            double[] mean = new double[(int) global.elementCount()];
            for (ClientUpdate c : clients) {
                Tensor padded = aggregator.padZero(c.tensors().get("m.lora_B.weight"), Aggregator.Factor.B, 4);
                assertArrayEquals(new long[] {13, 4}, padded.shape());
                for (int i = 0; i < mean.length; i++) {
                    mean[i] += c.weight() * padded.get(i);
                }
                total += c.weight();
            }
            for (int i = 0; i < mean.length; i++) {
                assertEquals(mean[i] / total, global.get(i), 1e-6);
            }
            assertThrows(IllegalArgumentException.class,
                    () -> aggregator.padZero(clients.get(1).tensors().get("m.lora_A.weight"), Aggregator.Factor.A, 2));
        }
    }

    static Stream<Arguments> float64Cases() {
        List<Arguments> cases = new ArrayList<>();
        for (String backend : TestBackends.names()) {
            for (Strategy strategy : Strategy.values()) {
                if (strategy.productSpace()) {
                    continue; // SVD, STACK: not factor averages; held to a dense reference in io.fedlora.product
                }
                cases.add(Arguments.of(backend, strategy, DType.F32, 0, 10));
                cases.add(Arguments.of(backend, strategy, DType.BF16, 3, 10));
                cases.add(Arguments.of(backend, strategy, DType.F16, 24, 10));
                cases.add(Arguments.of(backend, strategy, DType.F32, 0, 1000));
            }
        }
        return cases.stream();
    }

    @ParameterizedTest(name = "{0} {1} {2} R={3} K={4}")
    @MethodSource("float64Cases")
    void everyBackendMatchesFloat64(String backend, Strategy strategy, DType dtype, int rank, int k) {
        // Shapes: a prime width (vector tail), a B wider than a tile, and a rank-1 module.
        List<Shape> shapes = k > 100
                ? List.of(new Shape("attn.q", 61, 29))
                : List.of(new Shape("attn.q", 61, 29), new Shape("mlp.up", 17, 8209), new Shape("tiny", 1, 1));
        int[] ranks = new int[k];
        for (int c = 0; c < k; c++) {
            ranks[c] = c % 10 == 0 ? 20 : 1 + c % 5; // mostly low rank, one in ten at rank 20
        }
        List<ClientUpdate> clients = TestClients.clients(ranks, shapes, dtype, k + rank);
        Map<String, Reference64.Module> want = Reference64.aggregate(strategy, rank, clients);
        try (Aggregator aggregator = Aggregator.builder().strategy(strategy).globalRank(rank).backend(backend).build()) {
            assertEquals(backend, aggregator.backendName());
            Map<String, Tensor> got = aggregator.aggregate(clients);
            for (Map.Entry<String, Reference64.Module> e : want.entrySet()) {
                double errA = Reference64.relativeError(got.get(e.getKey() + ".lora_A.weight"), e.getValue().a());
                double errB = Reference64.relativeError(got.get(e.getKey() + ".lora_B.weight"), e.getValue().b());
                assertTrue(errA <= 1e-5 && errB <= 1e-5, e.getKey() + ": relative error A " + errA + ", B " + errB);
            }
        }
    }

    @Test
    void foldedScalesKeepBTimesAMeaningful() {
        // alpha = 16: the small client's scale is 16/2 = 8, the large one's 16/4 = 4, the global 16/4 = 4.
        List<ClientUpdate> clients = rank2And4().stream()
                .map(c -> c.withScale(LoraScale.alphaOverRank(16))).toList();
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.ZERO).foldScale(LoraScale.alphaOverRank(16))
                .backend("scalar").build()) {
            float[] b = aggregator.aggregate(clients).get(M + ".lora_B.weight").toFloatArray();
            // B[0][0] = (1 * 8 * 1 + 3 * 4 * 3) / 4 / 4; B[0][2] = 3 * 4 * 5 / 4 / 4.
            assertEquals((8.0 + 36) / 16, b[0], 1e-6);
            assertEquals(60.0 / 16, b[2], 1e-6);
            // A is averaged as it is.
            assertEquals(2.5f, aggregator.aggregate(clients).get(M + ".lora_A.weight").toFloatArray()[0]);
            InvalidUpdateException e = assertThrows(InvalidUpdateException.class,
                    () -> aggregator.aggregate(rank2And4()));
            assertTrue(e.getMessage().contains("no LoRA scale"), e.getMessage());
        }
    }

    @Test
    void otherTensorsAreAveragedWithClientWeights() {
        List<ClientUpdate> clients = new ArrayList<>();
        for (ClientUpdate c : rank2And4()) {
            Map<String, Tensor> t = new LinkedHashMap<>(c.tensors());
            t.put("classifier.bias", Tensor.of(new float[] {(float) c.weight(), 2}, 2));
            clients.add(ClientUpdate.of(c.clientId(), c.weight(), t));
        }
        Tensor bias = run(Strategy.REPLICATION, 0, clients).get("classifier.bias");
        assertArrayEquals(new long[] {2}, bias.shape());
        assertArrayEquals(new float[] {(1 * 1 + 3 * 3) / 4f, 2}, bias.toFloatArray());
    }

    @Test
    void truncateGivesEachClientItsRank() {
        Map<String, Tensor> global = run(Strategy.REPLICATION, 0, rank2And4());
        Map<String, Tensor> forSmall = Aggregator.truncate(global, 2);
        assertArrayEquals(new float[] {2.5f, 2.5f, 3.5f, 3.5f}, forSmall.get(M + ".lora_A.weight").toFloatArray());
        assertArrayEquals(new float[] {2.5f, 3.5f, 2.5f, 3.5f}, forSmall.get(M + ".lora_B.weight").toFloatArray());
        assertThrows(IllegalArgumentException.class, () -> Aggregator.truncate(global, 5));
    }

    @Test
    void embeddingFactorsArePairedToo() {
        Map<String, Tensor> t = new LinkedHashMap<>();
        t.put("embed.lora_embedding_A", Tensor.of(new float[] {1, 2, 3}, 1, 3));
        t.put("embed.lora_embedding_B", Tensor.of(new float[] {4, 5}, 2, 1));
        Map<String, Tensor> g = run(Strategy.ZERO, 0, List.of(ClientUpdate.of("c", 1, t)));
        assertArrayEquals(new float[] {1, 2, 3}, g.get("embed.lora_embedding_A").toFloatArray());
        assertArrayEquals(new float[] {4, 5}, g.get("embed.lora_embedding_B").toFloatArray());
    }
}
