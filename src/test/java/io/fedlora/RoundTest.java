package io.fedlora;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestClients.Shape;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.function.UnaryOperator;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.api.Test;

/** Streaming rounds: same as batch, mergeable, thread-safe, and undamaged by bad clients. */
class RoundTest {

    static final List<Shape> SHAPES = List.of(new Shape("q", 61, 29), new Shape("up", 17, 131), new Shape("one", 1, 1));

    static Stream<Arguments> backendsAndStrategies() {
        List<Arguments> out = new ArrayList<>();
        for (String backend : TestBackends.names()) {
            for (Strategy strategy : Strategy.values()) {
                if (strategy.productSpace()) {
                    continue; // SVD, STACK keep factors, not sums, and merge by appending: ProductRoundTest
                }
                out.add(Arguments.of(backend, strategy));
            }
        }
        return out.stream();
    }

    static void assertSame(Map<String, Tensor> want, Map<String, Tensor> got, double tol) {
        assertEquals(want.keySet(), got.keySet());
        for (String key : want.keySet()) {
            assertArrayEquals(want.get(key).shape(), got.get(key).shape(), key);
            float[] w = want.get(key).toFloatArray(), g = got.get(key).toFloatArray();
            for (int i = 0; i < w.length; i++) {
                assertEquals(w[i], g[i], tol * (1 + Math.abs(w[i])), key + " element " + i);
            }
        }
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndStrategies")
    void streamingEqualsBatchAndMergingInAnyOrderEqualsOneRound(String backend, Strategy strategy) {
        List<ClientUpdate> clients = TestClients.clients(new int[] {3, 8, 1, 5, 8, 2, 4, 7, 6}, SHAPES, DType.F32, 21);
        try (Aggregator aggregator = Aggregator.builder().strategy(strategy).backend(backend).build()) {
            Map<String, Tensor> batch = aggregator.aggregate(clients);
            try (Round round = aggregator.newRound()) {
                clients.forEach(round::add);
                // Same clients, same order, same float32 operations: identical.
                assertSame(batch, round.finish(), 0);
                assertEquals(clients.size(), round.clientCount());
            }
            // Three partial rounds over a shuffled split, merged in several orders.
            for (long seed = 0; seed < 4; seed++) {
                List<ClientUpdate> shuffled = new ArrayList<>(clients);
                Collections.shuffle(shuffled, new Random(seed));
                List<Round> parts = List.of(aggregator.newRound(), aggregator.newRound(), aggregator.newRound());
                for (int i = 0; i < shuffled.size(); i++) {
                    parts.get(i % 3).add(shuffled.get(i));
                }
                List<Round> order = new ArrayList<>(parts);
                Collections.shuffle(order, new Random(seed + 100));
                order.get(0).merge(order.get(1));
                order.get(0).merge(order.get(2));
                assertSame(batch, order.get(0).finish(), 1e-5);
                parts.forEach(Round::close);
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("io.fedlora.RoundTest#backends")
    void sixteenThreadsAddingAThousandClientsLoseNothing(String backend) throws Exception {
        List<Shape> shapes = List.of(new Shape("q", 33, 19), new Shape("v", 8, 40));
        int[] ranks = new int[1000];
        for (int k = 0; k < ranks.length; k++) {
            ranks[k] = 1 + k % 9;
        }
        List<ClientUpdate> clients = TestClients.clients(ranks, shapes, DType.BF16, 1000);
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.REPLICATION).backend(backend).build();
                Round sequential = aggregator.newRound();
                Round concurrent = aggregator.newRound()) {
            clients.forEach(sequential::add);
            ExecutorService pool = Executors.newFixedThreadPool(16);
            try {
                List<Future<?>> futures = new ArrayList<>();
                for (int t = 0; t < 16; t++) {
                    int first = t;
                    futures.add(pool.submit(() -> {
                        for (int k = first; k < clients.size(); k += 16) {
                            concurrent.add(clients.get(k));
                        }
                    }));
                }
                for (Future<?> f : futures) {
                    f.get();
                }
            } finally {
                pool.shutdown();
            }
            assertEquals(1000, concurrent.clientCount());
            assertSame(sequential.finish(), concurrent.finish(), 1e-5);
        }
    }

    static Stream<String> backends() {
        return TestBackends.names().stream();
    }

    /** One bad client per case: the name of the case, how to spoil a good client, and words the error must hold. */
    static Stream<Arguments> badClients() {
        return Stream.of(
                Arguments.of("NaN in A", spoil(t -> put(t, "q.lora_A.weight", withValue(t.get("q.lora_A.weight"), Float.NaN))), "q", "NaN"),
                Arguments.of("infinity in B", spoil(t -> put(t, "up.lora_B.weight", withValue(t.get("up.lora_B.weight"), Float.NEGATIVE_INFINITY))), "up", "infinity"),
                Arguments.of("rank 0", spoil(t -> {
                    put(t, "q.lora_A.weight", Tensor.of(new float[0], 0, 61));
                    return put(t, "q.lora_B.weight", Tensor.of(new float[0], 29, 0));
                }), "q", "rank 0"),
                Arguments.of("missing B", spoil(t -> remove(t, "q.lora_B.weight")), "q", "no q.lora_B.weight"),
                Arguments.of("missing A", spoil(t -> remove(t, "up.lora_A.weight")), "up", "no up.lora_A.weight"),
                Arguments.of("A and B ranks differ", spoil(t -> put(t, "q.lora_B.weight", Tensor.of(new float[29 * 2], 29, 2))), "q", "rank"),
                Arguments.of("input features differ", spoil(t -> put(t, "q.lora_A.weight", Tensor.of(new float[3 * 60], 3, 60))), "q", "60 input features"),
                Arguments.of("output features differ", spoil(t -> put(t, "up.lora_B.weight", Tensor.of(new float[130 * 3], 130, 3))), "up", "130 output features"),
                Arguments.of("1-D factor", spoil(t -> put(t, "one.lora_A.weight", Tensor.of(new float[3], 3))), "one", "2-D"),
                Arguments.of("other tensor shape", spoil(t -> put(t, "head.bias", Tensor.of(new float[4], 4))), "head.bias", "shape [4]"),
                Arguments.of("no LoRA factors", spoil(t -> {
                    t.clear();
                    return put(t, "head.bias", Tensor.of(new float[3], 3));
                }), "", "no LoRA factors"));
    }

    static UnaryOperator<Map<String, Tensor>> spoil(UnaryOperator<Map<String, Tensor>> f) {
        return f;
    }

    static Map<String, Tensor> put(Map<String, Tensor> t, String key, Tensor value) {
        t.put(key, value);
        return t;
    }

    static Map<String, Tensor> remove(Map<String, Tensor> t, String key) {
        t.remove(key);
        return t;
    }

    static Tensor withValue(Tensor t, float bad) {
        float[] v = t.toFloatArray();
        v[v.length - 1] = bad;
        return Tensor.of(v, t.shape());
    }

    static ClientUpdate withBias(ClientUpdate c) {
        Map<String, Tensor> t = new LinkedHashMap<>(c.tensors());
        t.put("head.bias", Tensor.of(new float[] {1, 2, (float) c.weight()}, 3));
        return ClientUpdate.of(c.clientId(), c.weight(), t);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badClients")
    void aBadClientIsRefusedAndTheRoundStillFinishesCorrectly(String name, UnaryOperator<Map<String, Tensor>> spoiler,
            String module, String words) {
        List<ClientUpdate> good = TestClients.clients(new int[] {4, 2, 3}, SHAPES, DType.F32, 8).stream()
                .map(RoundTest::withBias).toList();
        ClientUpdate bad = ClientUpdate.of("bad-client", 2,
                spoiler.apply(new LinkedHashMap<>(withBias(TestClients.client("x", 1, 3, SHAPES, DType.F32, 77)).tensors())));
        for (String backend : TestBackends.names()) {
            try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.REPLICATION).backend(backend).build();
                    Round round = aggregator.newRound()) {
                round.add(good.get(0));
                round.add(good.get(1));
                InvalidUpdateException e = assertThrows(InvalidUpdateException.class, () -> round.add(bad), name);
                assertEquals("bad-client", e.clientId());
                assertTrue(e.getMessage().contains("client 'bad-client'") && e.getMessage().contains(module)
                        && e.getMessage().contains(words), name + ": " + e.getMessage());
                assertTrue(!e.getMessage().contains("\n"), "one line: " + e.getMessage());
                assertEquals(2, round.clientCount());
                round.add(good.get(2));
                assertSame(aggregator.aggregate(good), round.finish(), 0);
                // Batch refuses the same client, naming it.
                List<ClientUpdate> withBad = new ArrayList<>(good);
                withBad.add(1, bad);
                InvalidUpdateException batch = assertThrows(InvalidUpdateException.class, () -> aggregator.aggregate(withBad));
                assertEquals("bad-client", batch.clientId());
            }
        }
    }

    @Test
    void badWeightsAreRefused() {
        ClientUpdate c = TestClients.client("w", 1, 2, SHAPES, DType.F32, 1);
        try (Aggregator aggregator = Aggregator.builder().backend("scalar").build(); Round round = aggregator.newRound()) {
            for (double w : new double[] {-1, Double.NaN, Double.POSITIVE_INFINITY}) {
                InvalidUpdateException e = assertThrows(InvalidUpdateException.class,
                        () -> round.add(ClientUpdate.of("w", w, c.tensors())));
                assertTrue(e.getMessage().startsWith("client 'w': weight " + w), e.getMessage());
            }
            assertEquals(0, round.clientCount());
            assertThrows(IllegalStateException.class, round::finish);
            round.add(ClientUpdate.of("zero", 0, c.tensors()));
            IllegalStateException e = assertThrows(IllegalStateException.class, round::finish);
            assertTrue(e.getMessage().contains("total weight is 0"), e.getMessage());
        }
    }

    @Test
    void aModuleMissingFromSomeClientsIsAnErrorUnlessAllowed() {
        ClientUpdate full = TestClients.client("full", 1, 2, SHAPES, DType.F32, 1);
        Map<String, Tensor> partial = new LinkedHashMap<>(TestClients.client("partial", 3, 4, SHAPES, DType.F32, 2).tensors());
        partial.remove("one.lora_A.weight");
        partial.remove("one.lora_B.weight");
        List<ClientUpdate> clients = List.of(full, ClientUpdate.of("partial", 3, partial));
        try (Aggregator strict = Aggregator.builder().strategy(Strategy.ZERO).backend("scalar").build()) {
            InvalidUpdateException e = assertThrows(InvalidUpdateException.class, () -> strict.aggregate(clients));
            assertEquals("partial", e.clientId());
            assertTrue(e.getMessage().contains("has no 'one', which client 'full' has"), e.getMessage());
            try (Round round = strict.newRound()) {
                // The round refuses the client in add itself, and finishes on the others.
                round.add(full);
                e = assertThrows(InvalidUpdateException.class, () -> round.add(clients.get(1)));
                assertEquals("one", e.module());
                assertEquals(1, round.clientCount());
                assertSame(strict.aggregate(List.of(full)), round.finish(), 0);
                // A client bringing a module the round has not seen is refused too.
                try (Round other = strict.newRound()) {
                    other.add(clients.get(1));
                    e = assertThrows(InvalidUpdateException.class, () -> other.add(full));
                    assertTrue(e.getMessage().contains("has 'one', which client 'partial' has not"), e.getMessage());
                }
            }
        }
        try (Aggregator lenient = Aggregator.builder().strategy(Strategy.ZERO).allowMissing(true).backend("scalar").build()) {
            Map<String, Tensor> g = lenient.aggregate(clients);
            // Averaged over the one client that has it: its own values.
            assertArrayEquals(full.tensors().get("one.lora_A.weight").toFloatArray(), g.get("one.lora_A.weight").toFloatArray());
        }
    }

    @Test
    void aRoundCanBeFinishedAndContinued() {
        List<ClientUpdate> clients = TestClients.clients(new int[] {2, 6, 3}, SHAPES, DType.F16, 4);
        try (Aggregator aggregator = Aggregator.builder().backend("scalar").build(); Round round = aggregator.newRound()) {
            round.add(clients.get(0));
            round.add(clients.get(1));
            assertSame(aggregator.aggregate(clients.subList(0, 2)), round.finish(), 0);
            round.add(clients.get(2));
            assertSame(aggregator.aggregate(clients), round.finish(), 0);
        }
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndStrategies")
    void aPartialFromAnotherServerMergesLikeOneRound(String backend, Strategy strategy) {
        List<ClientUpdate> clients = TestClients.clients(new int[] {3, 8, 1, 5, 2}, SHAPES, DType.BF16, 31).stream()
                .map(RoundTest::withBias).toList();
        try (Aggregator here = Aggregator.builder().strategy(strategy).backend(backend).build();
                Aggregator there = Aggregator.builder().strategy(strategy).backend("scalar").build();
                Round local = here.newRound();
                Round remote = there.newRound()) {
            clients.subList(0, 2).forEach(local::add);
            clients.subList(2, 5).forEach(remote::add);
            Partial exported = remote.toPartial();
            // Through what a safetensors file holds, as another server would receive it.
            Partial partial = Partial.of(exported.tensors(), exported.metadata());
            try (Round received = here.roundFromPartial(partial)) {
                assertEquals(3, received.clientCount());
                local.merge(received);
            }
            assertEquals(5, local.clientCount());
            assertSame(here.aggregate(clients), local.finish(), 1e-6);
        }
        Strategy other = Strategy.values()[(strategy.ordinal() + 1) % 3];
        try (Aggregator a = Aggregator.builder().strategy(strategy).backend("scalar").build();
                Aggregator b = Aggregator.builder().strategy(other).backend("scalar").build();
                Round r = a.newRound()) {
            r.add(clients.get(0));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> b.roundFromPartial(r.toPartial()));
            assertTrue(e.getMessage().contains("summed under " + r.policy()), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> Partial.of(clients.get(0).tensors(), Map.of()));
        }
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("backendsAndStrategies")
    void batchFindsNaNAndInfinityInThePassThatSumsThem(String backend, Strategy strategy) {
        // Batch skips the separate scan; the fused kernel (or NORM's norm) must still name the client.
        for (String key : List.of("q.lora_A.weight", "up.lora_B.weight", "head.bias")) {
            for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY}) {
                List<ClientUpdate> clients = new ArrayList<>(TestClients.clients(new int[] {4, 2, 3}, SHAPES, DType.F16, 8)
                        .stream().map(RoundTest::withBias).toList());
                Map<String, Tensor> spoilt = new LinkedHashMap<>(clients.get(1).tensors());
                spoilt.put(key, withValue(spoilt.get(key), bad));
                clients.set(1, ClientUpdate.of("spoilt", 1, spoilt));
                try (Aggregator aggregator = Aggregator.builder().strategy(strategy).backend(backend).build()) {
                    InvalidUpdateException e = assertThrows(InvalidUpdateException.class, () -> aggregator.aggregate(clients));
                    assertEquals("spoilt", e.clientId(), e.getMessage());
                    assertEquals(key.replace(".lora_A.weight", "").replace(".lora_B.weight", ""), e.module(), e.getMessage());
                }
            }
        }
    }
}
