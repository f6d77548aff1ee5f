package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.product.Split;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The policy's fifth component, SVD's output split: FLEXLORA by default and through the
 * 4-argument constructor, part of equality for SVD, normalised to FLEXLORA for every other
 * strategy (whose arithmetic it cannot change, so their rounds still merge), carried by the
 * builder, by Java serialisation and by a partial's policy JSON, which reads an older partial
 * without the field as FLEXLORA.
 */
class PolicySplitTest {

    private static final LoraScale SCALE = new LoraScale(16, true, Map.of("v", 32.0));

    @Test
    void defaultsAndEqualityForSvd() {
        Policy svd = Policy.of(Strategy.SVD);
        assertEquals(Split.FLEXLORA, svd.split());
        assertEquals(Split.FLEXLORA, new Policy(Strategy.SVD, 8, true, SCALE).split(), "the 4-argument constructor");
        assertEquals(new Policy(Strategy.SVD, 8, true, SCALE), new Policy(Strategy.SVD, 8, true, SCALE, Split.FLEXLORA));
        Policy balanced = svd.withSplit(Split.BALANCED);
        assertEquals(Split.BALANCED, balanced.split());
        assertNotEquals(svd, balanced, "SVD policies differing only in the split compute different factors");
        assertNotEquals(svd.hashCode(), balanced.hashCode());
        // Every other with* keeps the split.
        Policy all = balanced.withGlobalRank(12).withAllowMissing(true).withFoldScale(SCALE);
        assertEquals(new Policy(Strategy.SVD, 12, true, SCALE, Split.BALANCED), all);
        assertEquals(Split.FLEXLORA, all.withSplit(Split.FLEXLORA).split());
        assertThrows(NullPointerException.class, () -> new Policy(Strategy.SVD, 0, false, null, null));
        assertThrows(NullPointerException.class, () -> svd.withSplit(null));
        assertThrows(NullPointerException.class, () -> new Policy(Strategy.ZERO, 0, false, null, null),
                "null is refused whatever the strategy");
    }

    @ParameterizedTest
    @EnumSource(value = Strategy.class, names = "SVD", mode = EnumSource.Mode.EXCLUDE)
    void theSplitIsNormalisedAwayForEveryOtherStrategy(Strategy strategy) {
        Policy plain = new Policy(strategy, 4, false, SCALE);
        Policy asked = new Policy(strategy, 4, false, SCALE, Split.BALANCED);
        assertEquals(Split.FLEXLORA, asked.split());
        assertEquals(plain, asked);
        assertEquals(plain, plain.withSplit(Split.BALANCED));
        assertEquals(plain.hashCode(), asked.hashCode());
        try (Aggregator a = Aggregator.builder().strategy(strategy).split(Split.BALANCED).globalRank(4).foldScale(SCALE)
                .build()) {
            assertEquals(plain, a.policy());
        }
    }

    @Test
    void theBuilderCarriesTheSplit() {
        try (Aggregator a = Aggregator.builder().strategy(Strategy.SVD).split(Split.BALANCED).build();
                Aggregator b = Aggregator.builder().policy(Policy.of(Strategy.SVD).withSplit(Split.BALANCED)).build();
                Aggregator c = Aggregator.builder().strategy(Strategy.SVD).build()) {
            assertEquals(Split.BALANCED, a.policy().split());
            assertEquals(a.policy(), b.policy(), "policy(p) copies the split");
            assertEquals(Split.FLEXLORA, c.policy().split(), "the builder's default");
        }
        assertThrows(NullPointerException.class, () -> Aggregator.builder().split(null));
    }

    /** ZERO rounds built with different split settings hold equal policies, so they merge (the split cannot change ZERO). */
    @Test
    void zeroRoundsWithDifferentSplitSettingsMerge() {
        List<ClientUpdate> clients = PartialBytesTest.clients().stream().map(c -> c.withScale(null)).toList();
        try (Aggregator plain = Aggregator.builder().strategy(Strategy.ZERO).allowMissing(true).backend("scalar").build();
                Aggregator asked = Aggregator.builder().strategy(Strategy.ZERO).split(Split.BALANCED).allowMissing(true)
                        .backend("scalar").build();
                Round left = plain.newRound(); Round rightPlain = plain.newRound(); Round rightAsked = asked.newRound();
                Round want = plain.newRound(); Round got = plain.newRound()) {
            clients.subList(0, 2).forEach(left::add);
            clients.subList(2, clients.size()).forEach(rightPlain::add);
            clients.subList(2, clients.size()).forEach(rightAsked::add);
            want.merge(left);
            want.merge(rightPlain);
            got.merge(left);
            got.merge(rightAsked);
            RoundAtomicityTest.assertBitwise(want.finish(), got.finish());
            got.mergePartial(Partial.fromBytes(java.lang.foreign.MemorySegment.ofArray(rightAsked.toPartial().toBytes())));
            assertEquals(clients.size() + 3, got.clientCount());
        }
    }

    @Test
    void javaSerialisationKeepsTheSplit() throws Exception {
        Policy p = new Policy(Strategy.SVD, 8, true, SCALE, Split.BALANCED);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            out.writeObject(p);
        }
        try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
            assertEquals(p, in.readObject());
        }
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parse(String json) throws Exception {
        return (Map<String, Object>) Json.parse(json);
    }

    @ParameterizedTest
    @EnumSource(Split.class)
    void partialPolicyJsonCarriesTheSplit(Split split) throws Exception {
        Policy p = new Policy(Strategy.SVD, 8, true, SCALE, split);
        Map<String, Object> json = Partial.policyJson(p);
        assertEquals(split.name(), json.get("split"));
        assertEquals(p, Partial.policyOf(parse(Json.write(json, false))));
    }

    /** A partial written before the split existed (no "split" in its policy) reads as FLEXLORA; a bad split is refused whole. */
    @Test
    @SuppressWarnings("unchecked")
    void anOlderPartialWithoutTheSplitReadsAsFlexlora() throws Exception {
        List<ClientUpdate> clients = PartialBytesTest.clients();
        try (Aggregator aggregator = PartialBytesTest.aggregator(PartialBytesTest.POLICY); Round round = aggregator.newRound()) {
            clients.forEach(round::add);
            Partial partial = round.toPartial();
            Map<String, Object> doc = parse(partial.metadata().get(Partial.METADATA_KEY));
            Map<String, Object> policy = (Map<String, Object>) doc.get("policy");
            assertEquals("FLEXLORA", policy.get("split"), "written out");
            policy.remove("split");
            Partial old = Partial.of(partial.tensors(), Map.of(Partial.METADATA_KEY, Json.write(doc, false)));
            assertEquals(PartialBytesTest.POLICY, old.policy());
            try (Round merged = aggregator.roundFromPartial(old)) {
                assertEquals(clients.size(), merged.clientCount(), "and merges into a round of today's equal policy");
            }
            for (Object bad : new Object[] {"DIAGONAL", 7L, "balanced"}) {
                policy.put("split", bad);
                Map<String, String> meta = Map.of(Partial.METADATA_KEY, Json.write(doc, false));
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> Partial.of(partial.tensors(), meta));
                assertTrue(e.getMessage().startsWith("malformed fedlora partial: ") && e.getMessage().contains("split"),
                        e.getMessage());
            }
        }
        Map<String, Object> svd = new LinkedHashMap<>(Partial.policyJson(Policy.of(Strategy.SVD).withSplit(Split.BALANCED)));
        svd.remove("split");
        assertEquals(Policy.of(Strategy.SVD), Partial.policyOf(svd));
    }
}
