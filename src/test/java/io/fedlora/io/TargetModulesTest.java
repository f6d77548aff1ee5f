package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/** PEFT's target_modules rules as {@link TargetModules} applies them. */
class TargetModulesTest {

    @Test
    void listsMatchByNameOrDottedSuffix() {
        List<String> names = List.of("q_proj", "mlp.up_proj");
        assertTrue(TargetModules.matches(names, "model.layers.0.self_attn.q_proj"));
        assertTrue(TargetModules.matches(names, "q_proj"));
        assertTrue(TargetModules.matches(names, "layers.3.mlp.up_proj"));
        assertFalse(TargetModules.matches(names, "model.layers.0.self_attn.xq_proj"), "a suffix at a dot only");
        assertFalse(TargetModules.matches(names, "layers.3.up_proj"));
    }

    @Test
    void unionMergesListsInOrderAndJoinsRegexes() {
        assertEquals(List.of("q_proj", "v_proj", "up_proj"), TargetModules.union(
                new ArrayList<>(Arrays.asList(List.of("q_proj", "v_proj"), null, List.of("up_proj", "q_proj")))));
        assertEquals(".*q_proj", TargetModules.union(List.of(".*q_proj", ".*q_proj")));
        Object joined = TargetModules.union(List.of(".*\\.q_proj", List.of("up_proj")));
        assertTrue(TargetModules.matches(joined, "layers.0.q_proj") && TargetModules.matches(joined, "layers.0.up_proj")
                && !TargetModules.matches(joined, "layers.0.v_proj"), joined.toString());
    }

    @Test
    void coveringAddsWhatWouldBeLeftOut() {
        List<String> modules = List.of("layers.0.q_proj", "layers.0.mlp.fc1");
        assertEquals(List.of("q_proj", "layers.0.mlp.fc1"), TargetModules.covering(List.of("q_proj"), modules));
        Object regex = TargetModules.covering(".*q_proj", modules);
        for (String m : modules) {
            assertTrue(TargetModules.matches(regex, m), regex + " selects " + m);
        }
        assertFalse(TargetModules.matches(regex, "layers.1.mlp.fc1"), "only the missing module is added: " + regex);
        assertEquals(List.of("q_proj", "fc1"), TargetModules.covering(null, modules), "no config: last name parts");
    }
}
