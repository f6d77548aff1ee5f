package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.product.Split;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * SVD rounds under both splits: a partial carries its split (as a value and as bytes), a round
 * refuses a partial or round of the other split and stays as it was, the two splits' rounds
 * finish to different factors of the same product, and an SVD partial written before the split
 * existed reads as FLEXLORA.
 */
class SplitRoundTest {

    private static final Policy FLEX = Policy.of(Strategy.SVD).withGlobalRank(4);
    private static final Policy BALANCED = FLEX.withSplit(Split.BALANCED);

    private static Aggregator aggregator(Policy policy) {
        return Aggregator.builder().policy(policy).backend("scalar").build();
    }

    @Test
    void partialsCarryTheSplitAndDoNotMergeAcrossSplits() {
        List<ClientUpdate> clients = ProductRoundTest.clients(false, false, 3).stream().map(c -> c.withScale(null)).toList();
        try (Aggregator flex = aggregator(FLEX); Aggregator balanced = aggregator(BALANCED);
                Round f = flex.newRound(); Round b = balanced.newRound()) {
            clients.forEach(f::add);
            clients.forEach(b::add);
            Partial bp = Partial.fromBytes(MemorySegment.ofArray(b.toPartial().toBytes()));
            assertEquals(BALANCED, bp.policy(), "the split travels with the bytes");
            try (Round back = balanced.roundFromPartial(bp)) {
                RoundAtomicityTest.assertBitwise(balanced.aggregate(clients), back.finish());
            }
            Partial before = f.toPartial();
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> f.mergePartial(bp));
            assertTrue(e.getMessage().contains("only rounds of equal policies merge"), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> f.merge(b));
            RoundAtomicityTest.assertSamePartial(before, f.toPartial());
            Map<String, Tensor> gf = f.finish(), gb = b.finish();
            String keyA = "q.lora_A.weight";
            assertFalse(java.util.Arrays.equals(gf.get(keyA).toFloatArray(), gb.get(keyA).toFloatArray()),
                    "the splits' factors differ");
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void anSvdPartialWithoutTheSplitReadsAsFlexlora() throws Exception {
        List<ClientUpdate> clients = ProductRoundTest.clients(false, false, 4).stream().map(c -> c.withScale(null)).toList();
        try (Aggregator balanced = aggregator(BALANCED); Aggregator flex = aggregator(FLEX); Round b = balanced.newRound()) {
            clients.forEach(b::add);
            Partial p = b.toPartial();
            Map<String, Object> doc = (Map<String, Object>) Json.parse(p.metadata().get(Partial.METADATA_KEY));
            ((Map<String, Object>) doc.get("policy")).remove("split");
            Partial old = Partial.of(p.tensors(), Map.of(Partial.METADATA_KEY, Json.write(doc, false)));
            assertEquals(FLEX, old.policy());
            try (Round r = flex.roundFromPartial(old)) {
                RoundAtomicityTest.assertBitwise(flex.aggregate(clients), r.finish());
            }
        }
    }
}
