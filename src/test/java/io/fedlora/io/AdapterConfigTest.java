package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** adapter_config.json: everything kept through read, withRanks and write; bad fields named. */
class AdapterConfigTest {

    @TempDir
    Path dir;

    @Test
    void everyFieldSurvivesAndOnlyTheRanksChange() throws Exception {
        Path file = dir.resolve("adapter_config.json");
        Files.writeString(file, """
                {"peft_type": "LORA", "r": 8, "lora_alpha": 16.5, "lora_dropout": 0.05, "use_rslora": true,
                 "target_modules": ["q_proj", "v_proj"], "modules_to_save": null, "fan_in_fan_out": false,
                 "rank_pattern": {"old": 2}, "alpha_pattern": {"v_proj": 4},
                 "nested": {"deep": [1, 2.5, {"x": "y"}]}, "big": 123456789012345678901234567890}
                """);
        AdapterConfig config = AdapterConfig.read(file);
        assertEquals(8, config.r());
        assertEquals(16.5, config.loraAlpha());
        assertTrue(config.useRslora());
        assertEquals(4.0 / Math.sqrt(9), config.scale().of("base_model.model.layers.0.v_proj", 9));
        assertEquals(16.5 / 2, config.scale().of("base_model.model.layers.0.q_proj", 4));

        Map<String, Integer> ranks = new LinkedHashMap<>();
        ranks.put("layers.0.q_proj", 12);
        ranks.put("layers.0.v_proj", 5);
        AdapterConfig out = config.withRanks(12, ranks);
        Path written = dir.resolve("out.json");
        Files.writeString(written, out.toJson());
        Map<String, Object> back = AdapterConfig.read(written).json();

        Map<String, Object> expected = config.json();
        expected.put("r", 12L);
        expected.put("rank_pattern", Map.of("layers.0.v_proj", 5L));
        assertEquals(expected, back);
        assertEquals(new BigInteger("123456789012345678901234567890"), back.get("big"));
        assertEquals(Arrays.asList(1L, 2.5, Map.of("x", "y")), ((Map<?, ?>) back.get("nested")).get("deep"));
        assertTrue(back.containsKey("modules_to_save") && back.get("modules_to_save") == null);
        assertEquals(List.of("q_proj", "v_proj"), back.get("target_modules"));
    }

    @Test
    void badFieldsAreNamed() throws Exception {
        Map<String, String> cases = Map.ofEntries(
                Map.entry("{\"lora_alpha\": 0}", "lora_alpha is 0; it must be a positive number"),
                Map.entry("{\"alpha_pattern\": {\"q\": -2}}", "alpha_pattern['q'] is -2; it must be a positive number"),
                Map.entry("{\"r\": \"\u00e9\"}", "r is not a positive integer"));
        for (var c : cases.entrySet()) {
            Path file = dir.resolve("bad.json");
            Files.writeString(file, c.getKey());
            InvalidFileException e = assertThrows(InvalidFileException.class, () -> AdapterConfig.read(file), c.getKey());
            assertTrue(e.getMessage().startsWith(file + ": ") && e.getMessage().contains(c.getValue()),
                    c.getKey() + " -> " + e.getMessage());
        }
        // Not UTF-8: the byte and where it is (it used to say "cannot read: Input length = 1").
        Path latin1 = dir.resolve("latin1.json");
        Files.write(latin1, "{\"base_model_name_or_path\": \"caf\u00e9\"}".getBytes(java.nio.charset.StandardCharsets.ISO_8859_1));
        InvalidFileException notUtf8 = assertThrows(InvalidFileException.class, () -> AdapterConfig.read(latin1));
        assertEquals(latin1 + ": is not valid UTF-8 (byte 0xE9 at offset 32); JSON files are UTF-8", notUtf8.getMessage());
        cases = Map.of(
                "{\"r\": 0}", "r is not a positive integer",
                "{\"r\": 8.5}", "r is not a positive integer",
                "{\"lora_alpha\": \"x\"}", "lora_alpha is not a finite number",
                "{\"use_rslora\": 1}", "use_rslora is not true or false",
                "{\"rank_pattern\": [1]}", "rank_pattern is not a JSON object",
                "{\"alpha_pattern\": {\"(\": 2}}", "not a valid regular expression",
                "{\"r\": 8,}", "invalid JSON",
                "{\"r\": 8} {}", "data after",
                "{\"r\": 1, \"r\": 2}", "Duplicate",
                "[1]", "is not a JSON object");
        for (var c : cases.entrySet()) {
            Path file = dir.resolve("bad.json");
            Files.writeString(file, c.getKey());
            InvalidFileException e = assertThrows(InvalidFileException.class, () -> AdapterConfig.read(file), c.getKey());
            assertTrue(e.getMessage().startsWith(file + ": ") && e.getMessage().contains(c.getValue()),
                    c.getKey() + " -> " + e.getMessage());
        }
    }
}
