package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestClients.Shape;
import io.fedlora.io.Safetensors;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Partials as bytes (issue 13, DESIGN §10): {@link Partial#toBytes()} and
 * {@link Partial#fromBytes} round-trip bit for bit, whole policy and counts included; a partial
 * of another policy is refused by the round it is merged into, which stays as it was; malformed
 * bytes are refused whole.
 */
class PartialBytesTest {

    static final List<Shape> SHAPES = List.of(new Shape("base_model.model.q", 37, 23), new Shape("base_model.model.v", 16, 70));
    static final LoraScale SCALE = new LoraScale(16, false, Map.of("v", 32.0));
    /** Everything a policy holds, none of it at its default. */
    static final Policy POLICY = new Policy(Strategy.REPLICATION, 6, true, SCALE);

    /** Mixed ranks (above and below the global rank) and dtypes, a non-LoRA tensor, a client lacking a module. */
    static List<ClientUpdate> clients() {
        List<ClientUpdate> out = new ArrayList<>();
        DType[] dtypes = {DType.F32, DType.BF16, DType.F16};
        int[] ranks = {3, 8, 1, 6, 12};
        for (int k = 0; k < ranks.length; k++) {
            ClientUpdate c = TestClients.client("c" + k, 0.3 + k, ranks[k], SHAPES, dtypes[k % 3], 40 + k);
            Map<String, Tensor> tensors = new LinkedHashMap<>(c.tensors());
            tensors.put("base_model.model.head.weight", Tensor.of(TestClients.values(new java.util.SplittableRandom(k), 10), 2, 5));
            if (k == 2) {
                tensors.remove("base_model.model.v.lora_A.weight");
                tensors.remove("base_model.model.v.lora_B.weight");
            }
            out.add(new ClientUpdate(c.clientId(), c.weight(), tensors, new LoraScale(8 + k, k % 2 == 1, Map.of()), null));
        }
        return out;
    }

    static Aggregator aggregator(Policy policy) {
        return Aggregator.builder().policy(policy).backend("scalar").build();
    }

    @Test
    void bytesRoundTripBitForBit() {
        try (Aggregator aggregator = aggregator(POLICY); Round round = aggregator.newRound()) {
            clients().forEach(round::add);
            Partial partial = round.toPartial();
            byte[] bytes = partial.toBytes();

            Partial back = Partial.fromBytes(MemorySegment.ofArray(bytes));
            assertEquals(POLICY, back.policy());
            assertEquals(5, back.clientCount());
            RoundAtomicityTest.assertSamePartial(partial, back);
            assertArrayEquals(bytes, back.toBytes(), "bytes -> partial -> bytes");
            for (Tensor t : back.tensors().values()) {
                assertTrue(t.data().heapBase().orElseThrow() == bytes, "sums are views into the bytes, not copies");
            }
            try (Round received = aggregator.roundFromPartial(back)) {
                RoundAtomicityTest.assertBitwise(round.finish(), received.finish());
            }
            // Off-heap (a mapped file, a network buffer) reads the same.
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment native_ = arena.allocate(bytes.length);
                native_.copyFrom(MemorySegment.ofArray(bytes));
                assertArrayEquals(bytes, Partial.fromBytes(native_).toBytes());
            }
        }
    }

    /** Merging partials received as bytes equals adding every client to one round, to the bit, on the scalar backend. */
    @Test
    void partialsFromBytesMergeLikeTheirRounds() {
        List<ClientUpdate> clients = clients();
        try (Aggregator aggregator = aggregator(POLICY); Round whole = aggregator.newRound();
                Round left = aggregator.newRound(); Round right = aggregator.newRound(); Round merged = aggregator.newRound()) {
            clients.forEach(whole::add);
            clients.subList(0, 2).forEach(left::add);
            clients.subList(2, clients.size()).forEach(right::add);
            merged.merge(left);
            merged.merge(right);
            try (Round fromBytes = aggregator.roundFromPartial(Partial.fromBytes(MemorySegment.ofArray(left.toPartial().toBytes())))) {
                fromBytes.mergePartial(Partial.fromBytes(MemorySegment.ofArray(right.toPartial().toBytes())));
                assertEquals(clients.size(), fromBytes.clientCount());
                RoundAtomicityTest.assertSamePartial(merged.toPartial(), fromBytes.toPartial());
                RoundAtomicityTest.assertBitwise(merged.finish(), fromBytes.finish());
            }
        }
    }

    @Test
    void aPartialOfAnotherPolicyIsRefusedAndTheRoundStaysAsItWas() {
        List<Policy> others = List.of(
                new Policy(Strategy.ZERO, 6, true, SCALE),
                new Policy(Strategy.REPLICATION, 0, true, SCALE),
                new Policy(Strategy.REPLICATION, 8, true, SCALE),
                new Policy(Strategy.REPLICATION, 6, false, SCALE),
                new Policy(Strategy.REPLICATION, 6, true, null),
                new Policy(Strategy.REPLICATION, 6, true, new LoraScale(16, true, Map.of("v", 32.0))),
                new Policy(Strategy.REPLICATION, 6, true, new LoraScale(16, false, Map.of("v", 32.5))));
        List<ClientUpdate> clients = clients();
        try (Aggregator aggregator = aggregator(POLICY); Round round = aggregator.newRound()) {
            clients.subList(0, 3).forEach(round::add);
            Partial before = round.toPartial();
            for (Policy other : others) {
                byte[] bytes;
                try (Aggregator theirs = aggregator(other); Round r = theirs.newRound()) {
                    clients.subList(3, 5).stream().map(c -> other.folds() ? c : c.withScale(null)).forEach(r::add);
                    bytes = r.toPartial().toBytes();
                }
                Partial received = Partial.fromBytes(MemorySegment.ofArray(bytes));
                assertEquals(other, received.policy(), "the whole policy travels");
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> round.mergePartial(received));
                assertTrue(e.getMessage().contains("only rounds of equal policies merge"), e.getMessage());
                assertThrows(IllegalArgumentException.class, () -> aggregator.roundFromPartial(received));
                RoundAtomicityTest.assertSamePartial(before, round.toPartial());
            }
        }
    }

    @Test
    void malformedBytesAreRefusedWhole() {
        byte[] bytes;
        Partial partial;
        try (Aggregator aggregator = aggregator(POLICY); Round round = aggregator.newRound()) {
            clients().forEach(round::add);
            partial = round.toPartial();
            bytes = partial.toBytes();
        }
        assertRefused("not a safetensors image", new byte[] {1, 2, 3});
        assertRefused("not a safetensors image", Arrays.copyOf(bytes, bytes.length - 4));

        // A NaN in the first sum, in place.
        byte[] nan = bytes.clone();
        long headerLength = MemorySegment.ofArray(nan).get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0);
        MemorySegment.ofArray(nan).set(ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 8 + headerLength + 4, Float.NaN);
        assertRefused("NaN", nan);

        String json = partial.metadata().get(Partial.METADATA_KEY);
        assertRefused("negative or not finite", withMetadata(partial, json.replaceFirst("\"ownerWeight\":\\[", "\"ownerWeight\":[-")));
        assertRefused("negative or not finite", withMetadata(partial, json.replaceFirst("\"totalWeight\":", "\"totalWeight\":-")));
        assertRefused("not a count", withMetadata(partial, json.replaceFirst("\"clients\":5", "\"clients\":-5")));
        assertRefused("not a count", withMetadata(partial, json.replaceFirst("\"clients\":5", "\"clients\":5.5")));
        assertRefused("no 'fedlora.partial' metadata", Safetensors.toBytes(partial.tensors(), Map.of("format", "pt")));
    }

    static byte[] withMetadata(Partial partial, String json) {
        return Safetensors.toBytes(partial.tensors(), Map.of(Partial.METADATA_KEY, json));
    }

    static void assertRefused(String words, byte[] bytes) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Partial.fromBytes(MemorySegment.ofArray(bytes)));
        assertTrue(e.getMessage().startsWith("malformed fedlora partial") && e.getMessage().contains(words), e.getMessage());
    }
}
