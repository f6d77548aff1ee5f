package io.fedlora;

import static io.fedlora.RoundAtomicityTest.assertBitwise;
import static io.fedlora.RoundAtomicityTest.assertSamePartial;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestClients.Shape;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.function.UnaryOperator;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Streaming and merging for SVD and STACK (issue 11 part 1): a round keeps every client's factors
 * and finishes through the batch code, so adding, merging rounds, exporting and re-reading
 * partials (as values and as bytes) and merging partials all give {@link Aggregator#aggregate}'s
 * bits for the same clients in the same order; refused clients and merges change nothing; a
 * malformed product partial is refused whole; the memory figure is right and logged.
 */
class ProductRoundTest {

    /** A Gram-route module, a wide one, and one where S > min(m, n) (the QR route). */
    static final List<Shape> SHAPES = List.of(new Shape("q", 61, 29), new Shape("up", 17, 131), new Shape("tiny", 3, 5));
    static final LoraScale SCALE = new LoraScale(16, false, Map.of("up", 32.0));
    static final int[] RANKS = {3, 8, 1, 5, 2, 4};

    /**
     * Mixed ranks and dtypes, weights and LoRA scales; with {@code missing}, client 2 lacks "up";
     * with {@code bias}, a non-LoRA tensor in every client.
     */
    static List<ClientUpdate> clients(boolean missing, boolean bias, long seed) {
        List<ClientUpdate> out = new ArrayList<>();
        DType[] dtypes = {DType.F32, DType.BF16, DType.F16};
        for (int k = 0; k < RANKS.length; k++) {
            ClientUpdate c = TestClients.client("c" + k, 0.5 + 1.25 * k, RANKS[k], SHAPES, dtypes[k % 3], seed * 101 + k);
            Map<String, Tensor> tensors = new LinkedHashMap<>(c.tensors());
            if (bias) {
                tensors.put("head.bias", Tensor.of(TestClients.values(new SplittableRandom(seed + k), 10), 2, 5));
            }
            if (missing && k == 2) {
                tensors.remove("up.lora_A.weight");
                tensors.remove("up.lora_B.weight");
            }
            out.add(new ClientUpdate(c.clientId(), c.weight(), tensors, new LoraScale(8 + k, k % 2 == 1, Map.of()), null));
        }
        return out;
    }

    static Stream<Arguments> policies() {
        List<Arguments> out = new ArrayList<>();
        for (Strategy strategy : List.of(Strategy.SVD, Strategy.STACK)) {
            for (boolean fold : new boolean[] {false, true}) {
                for (boolean missing : new boolean[] {false, true}) {
                    out.add(Arguments.of(new Policy(strategy, 0, missing, fold ? SCALE : null)));
                }
            }
        }
        out.add(Arguments.of(new Policy(Strategy.SVD, 6, true, SCALE))); // a global rank above some client ranks
        out.add(Arguments.of(new Policy(Strategy.SVD, 2, false, null)));
        out.add(Arguments.of(new Policy(Strategy.SVD, 6, true, SCALE, io.fedlora.product.Split.BALANCED)));
        out.add(Arguments.of(new Policy(Strategy.SVD, 0, false, null, io.fedlora.product.Split.BALANCED)));
        return out.stream();
    }

    static long expectedBytes(List<ClientUpdate> clients) {
        long bytes = 0;
        for (ClientUpdate c : clients) {
            for (Shape s : SHAPES) {
                Tensor a = c.tensors().get(s.module() + ".lora_A.weight");
                if (a != null) {
                    bytes += 4L * a.dim(0) * (s.in() + s.out());
                }
            }
        }
        return bytes;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("policies")
    void everyStreamingPathEqualsTheBatchBitForBit(Policy policy) throws IOException {
        for (String backend : TestBackends.names()) {
            List<ClientUpdate> withBias = clients(policy.allowMissing(), true, 1);
            List<ClientUpdate> plain = clients(policy.allowMissing(), false, 1);
            try (Aggregator aggregator = Aggregator.builder().policy(policy).backend(backend).build();
                    Round round = aggregator.newRound()) {
                Map<String, Tensor> batch = aggregator.aggregate(withBias);
                // add, with a non-LoRA tensor averaged beside the factors
                withBias.forEach(round::add);
                assertEquals(withBias.size(), round.clientCount());
                assertEquals(expectedBytes(withBias), round.factorBytes());
                assertBitwise(batch, round.finish());
                assertBitwise(batch, round.finish()); // finishing keeps the factors

                // toPartial -> of -> roundFromPartial, and toBytes -> fromBytes
                Partial partial = round.toPartial();
                assertTrue(partial.metadata().get(Partial.METADATA_KEY).contains("\"format\":3"), partial.metadata().toString());
                Partial back = Partial.of(partial.tensors(), partial.metadata());
                assertSamePartial(partial, back);
                try (Round received = aggregator.roundFromPartial(back)) {
                    assertEquals(round.factorBytes(), received.factorBytes());
                    assertBitwise(batch, received.finish());
                }
                byte[] bytes = partial.toBytes();
                try (Round received = aggregator.roundFromPartial(Partial.fromBytes(MemorySegment.ofArray(bytes)))) {
                    Arrays.fill(bytes, (byte) 0); // the round owns copies: the bytes may go
                    assertBitwise(batch, received.finish());
                }

                // merge and mergePartial append: a's clients, then b's (factors only: sums of plain
                // tensors merge in another order than a batch adds them)
                Map<String, Tensor> plainBatch = aggregator.aggregate(plain);
                List<ClientUpdate> reversed = new ArrayList<>(plain.subList(2, plain.size()));
                reversed.addAll(plain.subList(0, 2));
                Map<String, Tensor> reversedBatch = aggregator.aggregate(reversed);
                try (Round a = aggregator.newRound(); Round b = aggregator.newRound();
                        Round c = aggregator.newRound(); Round d = aggregator.newRound()) {
                    plain.subList(0, 2).forEach(a::add);
                    plain.subList(2, plain.size()).forEach(b::add);
                    Partial partialOfB = b.toPartial();
                    c.mergePartial(a.toPartial());
                    c.mergePartial(Partial.fromBytes(MemorySegment.ofArray(partialOfB.toBytes())));
                    assertBitwise(plainBatch, c.finish());
                    d.merge(b);
                    d.merge(a);
                    assertBitwise(reversedBatch, d.finish());
                    a.merge(b);
                    assertEquals(plain.size(), a.clientCount());
                    assertEquals(expectedBytes(plain), a.factorBytes());
                    assertBitwise(plainBatch, a.finish());
                    // SVD's output does not show the client order (pivoted Cholesky picks the same
                    // pivots in any order), the partial does: a's clients, then b's.
                    List<String> ids = plain.stream().map(ClientUpdate::clientId).toList();
                    assertEquals(ids, clientOrder(a.toPartial(), "q"));
                    assertEquals(ids, clientOrder(c.toPartial(), "q"));
                    List<String> reversedIds = reversed.stream().map(ClientUpdate::clientId).toList();
                    assertEquals(reversedIds, clientOrder(d.toPartial(), "q"));
                    // An engine that merged in its own order restores the batch's.
                    Partial restored = Partial.fromBytes(MemorySegment.ofArray(d.toPartial().toBytes())).inClientOrder(ids);
                    assertEquals(ids, clientOrder(restored, "q"));
                    try (Round fromRestored = aggregator.roundFromPartial(restored)) {
                        assertBitwise(plainBatch, fromRestored.finish());
                    }
                    try (Round fromReordered = aggregator.roundFromPartial(a.toPartial().inClientOrder(reversedIds))) {
                        assertBitwise(reversedBatch, fromReordered.finish());
                    }
                    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                            () -> a.toPartial().inClientOrder(ids.subList(1, ids.size())));
                    assertTrue(e.getMessage().contains("client 'c0' of the partial is not in the given client order"), e.getMessage());
                    assertSamePartial(partialOfB, b.toPartial()); // the merged round stays as it was
                    if (policy.strategy() == Strategy.STACK) {
                        assertNotEquals(Arrays.toString(plainBatch.get("q.lora_A.weight").toFloatArray()),
                                Arrays.toString(reversedBatch.get("q.lora_A.weight").toFloatArray()),
                                "the client order shows in a stack, so the order tests above can fail");
                    }
                }
            }
        }
    }

    @Test
    void aRoundContinuesAfterFinishAndOwnsItsCopiesOfMappedInput() {
        Policy policy = new Policy(Strategy.SVD, 0, false, SCALE);
        List<ClientUpdate> clients = clients(false, true, 2);
        try (Aggregator aggregator = Aggregator.of(policy); Round round = aggregator.newRound()) {
            Map<String, Tensor> firstThree = aggregator.aggregate(clients.subList(0, 3));
            Map<String, Tensor> all = aggregator.aggregate(clients);
            for (ClientUpdate c : clients.subList(0, 3)) {
                try (Arena arena = Arena.ofShared()) {
                    round.add(RoundAtomicityTest.inArena(c, arena));
                } // the input's memory is freed right after add
            }
            assertBitwise(firstThree, round.finish());
            clients.subList(3, clients.size()).forEach(round::add);
            assertBitwise(all, round.finish());
        }
    }

    @Test
    void theMemoryFigureIsReturnedAndLogged() {
        List<ClientUpdate> clients = clients(true, false, 3);
        for (Strategy strategy : List.of(Strategy.SVD, Strategy.STACK)) {
            try (Aggregator aggregator = Aggregator.of(Policy.of(strategy).withAllowMissing(true));
                    Round round = aggregator.newRound()) {
                assertEquals(0, round.factorBytes());
                long expected = 0;
                for (ClientUpdate c : clients) {
                    round.add(c);
                    for (Shape s : SHAPES) {
                        Tensor a = c.tensors().get(s.module() + ".lora_A.weight");
                        expected += a == null ? 0 : 4L * a.dim(0) * (s.in() + s.out()); // (m + n) r_k * 4
                    }
                    assertEquals(expected, round.factorBytes());
                }
                // client 2 lacks "up" (131 + 17 features, rank 1): 4 * (sum r * 290 - 148)
                assertEquals(4L * (Arrays.stream(RANKS).sum() * (61 + 29 + 17 + 131 + 3 + 5) - (17 + 131)), expected);
                PrintStream err = System.err;
                ByteArrayOutputStream captured = new ByteArrayOutputStream();
                System.setErr(new PrintStream(captured, true, StandardCharsets.UTF_8));
                try {
                    round.finish();
                } finally {
                    System.setErr(err);
                }
                String log = captured.toString(StandardCharsets.UTF_8);
                assertTrue(log.contains(strategy.cliName() + " round: finishing " + clients.size()
                        + " clients from the factors it keeps, " + expected + " bytes"), log);
            }
        }
        try (Aggregator aggregator = Aggregator.of(Policy.of(Strategy.REPLICATION).withAllowMissing(true));
                Round round = aggregator.newRound()) {
            clients.forEach(round::add);
            assertEquals(0, round.factorBytes(), "factor-sum rounds keep sums, not factors");
        }
    }

    /** {@code client} with its tensors changed by {@code edit}. */
    static ClientUpdate edited(ClientUpdate client, UnaryOperator<Map<String, Tensor>> edit) {
        return new ClientUpdate(client.clientId(), client.weight(), edit.apply(new LinkedHashMap<>(client.tensors())),
                client.scale(), null);
    }

    @Test
    void aRefusedClientOrMergeLeavesTheRoundAsItWas() {
        List<ClientUpdate> clients = clients(false, true, 4);
        ClientUpdate next = clients.get(2);
        for (Strategy strategy : List.of(Strategy.SVD, Strategy.STACK)) {
            Policy policy = new Policy(strategy, 0, false, SCALE);
            try (Arena arena = Arena.ofShared()) {
                {
                    RoundAtomicityTest.FaultyKernels kernels = new RoundAtomicityTest.FaultyKernels();
                    try (Aggregator aggregator = Aggregator.builder().policy(policy).kernels(kernels).build();
                            Round round = aggregator.newRound()) {
                        round.add(clients.get(0));
                        round.add(clients.get(1));
                        Partial before = round.toPartial();
                        long bytes = round.factorBytes();
                        List<ClientUpdate> bad = new ArrayList<>();
                        bad.add(edited(next, t -> {
                            t.remove("up.lora_A.weight");
                            t.remove("up.lora_B.weight");
                            return t;
                        }));
                        bad.add(edited(next, t -> {
                            t.put("extra.lora_A.weight", Tensor.of(new float[4], 2, 2));
                            t.put("extra.lora_B.weight", Tensor.of(new float[4], 2, 2));
                            return t;
                        }));
                        bad.add(edited(next, t -> {
                            t.put("q.lora_A.weight", Tensor.of(new float[2 * 60], 2, 60));
                            t.put("q.lora_B.weight", Tensor.of(new float[29 * 2], 29, 2));
                            return t;
                        }));
                        bad.add(edited(next, t -> {
                            float[] b = t.get("tiny.lora_B.weight").toFloatArray();
                            b[b.length - 1] = Float.NaN;
                            t.put("tiny.lora_B.weight", Tensor.of(b, t.get("tiny.lora_B.weight").shape()));
                            return t;
                        }));
                        bad.add(edited(next, t -> {
                            t.put("head.bias", Tensor.of(new float[10], 10));
                            return t;
                        }));
                        bad.add(next.withScale(null)); // folding needs the client's scale
                        for (ClientUpdate c : bad) {
                            InvalidUpdateException e = assertThrows(InvalidUpdateException.class, () -> round.add(c));
                            assertEquals("c2", e.clientId(), e.getMessage());
                            assertFalse(e.getMessage().contains("\n"), e.getMessage());
                            assertSamePartial(before, round.toPartial());
                            assertEquals(2, round.clientCount());
                            assertEquals(bytes, round.factorBytes());
                        }
                        // A fault half-way: every module's factors appended, then the plain tensor's sum fails.
                        kernels.failAt = kernels.adds.get() + 1;
                        ClientUpdate faulty = RoundAtomicityTest.inArena(next, arena);
                        InvalidUpdateException e = assertThrows(InvalidUpdateException.class, () -> round.add(faulty));
                        assertTrue(e.getMessage().contains("arena:c2") && e.getMessage().contains("I/O error"), e.getMessage());
                        assertSamePartial(before, round.toPartial());
                        assertEquals(bytes, round.factorBytes());
                        kernels.failAt = Integer.MAX_VALUE;

                        // Refused merges: other modules (missing modules not allowed), other shapes, other policy.
                        try (Round other = aggregator.newRound()) {
                            other.add(bad.get(1));
                            assertThrows(IllegalArgumentException.class, () -> round.merge(other));
                            assertThrows(IllegalArgumentException.class, () -> round.mergePartial(other.toPartial()));
                        }
                        try (Aggregator unfolded = Aggregator.builder().policy(policy.withFoldScale(null)).kernels(kernels).build();
                                Round other = unfolded.newRound()) {
                            other.add(next);
                            assertThrows(IllegalArgumentException.class, () -> round.merge(other));
                            assertThrows(IllegalArgumentException.class, () -> round.mergePartial(other.toPartial()));
                        }
                        assertSamePartial(before, round.toPartial());

                        round.add(next);
                        assertBitwise(aggregator.aggregate(clients.subList(0, 3)), round.finish());
                    }
                }
            }
        }
    }

    /**
     * Adds from three threads while snapshots are taken: every partial holds whole clients and
     * extends the one before, every finish is the batch of a prefix of the round's final client
     * order, and the last finish is the batch in that order.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(value = Strategy.class, names = {"SVD", "STACK"})
    void clientsAddedFromManyThreadsEqualTheBatchInTheRoundsOrder(Strategy strategy) throws Exception {
        List<ClientUpdate> clients = new ArrayList<>();
        for (int k = 0; k < 12; k++) {
            clients.add(TestClients.client("t" + k, 1 + k % 5, 1 + k % 6, SHAPES.subList(0, 2), DType.BF16, 70 + k));
        }
        List<Map<String, Tensor>> finished = new ArrayList<>();
        try (Aggregator aggregator = Aggregator.of(Policy.of(strategy)); Round round = aggregator.newRound()) {
            ExecutorService pool = Executors.newFixedThreadPool(3);
            try {
                List<Future<?>> adds = new ArrayList<>();
                for (ClientUpdate c : clients) {
                    adds.add(pool.submit(() -> round.add(c)));
                }
                List<String> seen = List.of();
                do {
                    Partial snapshot = round.toPartial();
                    List<String> order = clientOrder(snapshot, "q");
                    assertEquals(order, clientOrder(snapshot, "up"), "whole clients in every module");
                    assertEquals(seen, order.subList(0, seen.size()), "a later snapshot extends an earlier one");
                    assertEquals(snapshot.clientCount(), order.size());
                    seen = order;
                    if (round.clientCount() > 0) {
                        finished.add(round.finish());
                    }
                } while (!adds.stream().allMatch(Future::isDone));
                for (Future<?> f : adds) {
                    f.get();
                }
            } finally {
                pool.shutdown();
            }
            List<String> order = clientOrder(round.toPartial(), "q");
            List<ClientUpdate> inOrder = order.stream()
                    .map(id -> clients.stream().filter(c -> c.clientId().equals(id)).findFirst().orElseThrow()).toList();
            assertBitwise(aggregator.aggregate(inOrder), round.finish());
            List<Map<String, Tensor>> prefixes = new ArrayList<>();
            for (int n = 1; n <= inOrder.size(); n++) {
                prefixes.add(aggregator.aggregate(inOrder.subList(0, n)));
            }
            for (Map<String, Tensor> f : finished) {
                assertTrue(prefixes.stream().anyMatch(p -> bitwiseEqual(p, f)), "a finish during adds is a prefix's batch");
            }
        }
    }

    static boolean bitwiseEqual(Map<String, Tensor> x, Map<String, Tensor> y) {
        if (!x.keySet().equals(y.keySet())) {
            return false;
        }
        for (String key : x.keySet()) {
            if (!Arrays.equals(x.get(key).shape(), y.get(key).shape())) {
                return false;
            }
            float[] a = x.get(key).toFloatArray(), b = y.get(key).toFloatArray();
            for (int i = 0; i < a.length; i++) {
                if (Float.floatToRawIntBits(a[i]) != Float.floatToRawIntBits(b[i])) {
                    return false;
                }
            }
        }
        return true;
    }

    @SuppressWarnings("unchecked")
    static List<String> clientOrder(Partial partial, String module) throws IOException {
        Map<String, Object> doc = (Map<String, Object>) Json.parse(partial.metadata().get(Partial.METADATA_KEY));
        if (partial.clientCount() == 0) {
            return List.of();
        }
        for (Object o : (List<Object>) doc.get("modules")) {
            Map<String, Object> m = (Map<String, Object>) o;
            if (module.equals(m.get("module"))) {
                return ((List<Object>) m.get("clientIds")).stream().map(String.class::cast).toList();
            }
        }
        throw new AssertionError("no module " + module);
    }

    @Test
    void aMalformedProductPartialIsRefusedWhole() {
        List<ClientUpdate> clients = clients(false, true, 5);
        for (boolean fold : new boolean[] {false, true}) {
            Policy policy = new Policy(Strategy.SVD, 0, false, fold ? SCALE : null);
            try (Aggregator aggregator = Aggregator.of(policy); Round round = aggregator.newRound()) {
                clients.subList(0, 3).forEach(round::add);
                Partial p = round.toPartial();
                Map<String, Tensor> tensors = p.tensors();
                String json = p.metadata().get(Partial.METADATA_KEY);
                assertTrue(json.contains("\"ranks\":[3,8,1]"), json);

                refused("add up to 13, not its stack rank 12", tensors, json.replace("\"ranks\":[3,8,1]", "\"ranks\":[4,8,1]"));
                refused("add up to 11, not its stack rank 12", tensors, json.replace("\"ranks\":[3,8,1]", "\"ranks\":[2,8,1]"));
                refused("weight -0.5", tensors, json.replace("\"weights\":[0.5", "\"weights\":[-0.5"));
                refused("not a number", tensors, json.replace("\"weights\":[0.5", "\"weights\":[\"x\""));
                refused("3 client ids, 3 ranks, 3 weights and 2 scales", tensors,
                        json.replaceFirst("\"scales\":\\[([^,\\]]+),", "\"scales\":["));
                refused("2 client ids", tensors, json.replaceFirst("\"clientIds\":\\[\"c0\",", "\"clientIds\":["));
                refused("LoRA scale", tensors, json.replaceFirst("\"scales\":\\[[^,\\]]+", "\"scales\":[" + (fold ? "-1.0" : "2.0")));
                refused("holds 3 clients of the partial's 2", tensors, json.replace("\"clients\":3", "\"clients\":2"));
                refused("does not hold a replication partial", tensors, json.replace("\"SVD\"", "\"REPLICATION\""));
                refused("format 2 (factor sums) does not hold a svd partial", tensors, json.replace("\"format\":3", "\"format\":2"));
                refused("neither 2 (factor sums) nor 3", tensors, json.replace("\"format\":3", "\"format\":4"));
                refused("client 'c0' has rank 0", tensors, json.replace("\"ranks\":[3,8,1]", "\"ranks\":[0,11,1]"));

                Map<String, Tensor> nan = new LinkedHashMap<>(tensors);
                float[] a = nan.get("q.lora_A.weight").toFloatArray();
                a[a.length - 1] = Float.NaN;
                nan.put("q.lora_A.weight", Tensor.of(a, nan.get("q.lora_A.weight").shape()));
                refused("'q.lora_A.weight' holds NaN", nan, json);
                Map<String, Tensor> shape = new LinkedHashMap<>(tensors);
                shape.put("up.lora_B.weight", Tensor.of(new float[131 * 11], 131, 11));
                refused("'up.lora_B.weight' is ", shape, json);
                Map<String, Tensor> missing = new LinkedHashMap<>(tensors);
                missing.remove("tiny.lora_A.weight");
                refused("'tiny.lora_A.weight' is missing", missing, json);

                // Refused whole: a round it was to seed or be merged into is untouched.
                Partial before = round.toPartial();
                Map<String, String> badMeta = Map.of(Partial.METADATA_KEY, json.replace("\"ranks\":[3,8,1]", "\"ranks\":[4,8,1]"));
                assertThrows(IllegalArgumentException.class, () -> round.mergePartial(Partial.of(tensors, badMeta)));
                assertSamePartial(before, round.toPartial());
            }
        }
    }

    static void refused(String words, Map<String, Tensor> tensors, String json) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Partial.of(tensors, Map.of(Partial.METADATA_KEY, json)), words);
        assertTrue(e.getMessage().startsWith("malformed fedlora partial") && e.getMessage().contains(words), e.getMessage());
        assertFalse(e.getMessage().contains("\n"), e.getMessage());
    }

    @Test
    void factorSumPartialsKeepFormatTwo() {
        try (Aggregator aggregator = Aggregator.of(Policy.of(Strategy.ZERO)); Round round = aggregator.newRound()) {
            clients(false, true, 6).forEach(round::add);
            String json = round.toPartial().metadata().get(Partial.METADATA_KEY);
            assertTrue(json.contains("\"format\":2") && !json.contains("clientIds"), json);
        }
    }
}
