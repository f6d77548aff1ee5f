package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.ClientUpdate;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A PEFT adapter read from memory (issue 13: a Spark task that fetched a client from object
 * storage) is the adapter {@link PeftAdapter#open} maps from disk: same tensors, in place; same
 * config and scale; errors name the part (weights or config) under the caller's name.
 */
class PeftAdapterBytesTest {

    static final String CONFIG_JSON = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 16, \"use_rslora\": true,"
            + " \"alpha_pattern\": {\"v\": 8}, \"target_modules\": [\"q\", \"v\"]}";

    @TempDir
    Path dir;

    static Map<String, Tensor> tensors() {
        Map<String, Tensor> t = new LinkedHashMap<>();
        t.put("base_model.model.q.lora_A.weight", Tensor.of(new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 4, 2));
        t.put("base_model.model.q.lora_B.weight", Tensor.convert(new float[] {0.5f, -1, 2, 3.25f, 1e-3f, 7, -8, 9, 10, 11, 12, 13}, DType.BF16, 3, 4));
        t.put("base_model.model.head.weight", Tensor.convert(new float[] {0.1f, 0.2f}, DType.F16, 2));
        return t;
    }

    @Test
    void anAdapterFromBytesIsTheAdapterFromDisk() throws Exception {
        Path client = Files.createDirectories(dir.resolve("client"));
        Safetensors.write(client.resolve(PeftAdapter.WEIGHTS), tensors(), Map.of("format", "pt"));
        Files.writeString(client.resolve(PeftAdapter.CONFIG), CONFIG_JSON);
        byte[] weights = Files.readAllBytes(client.resolve(PeftAdapter.WEIGHTS));
        byte[] config = Files.readAllBytes(client.resolve(PeftAdapter.CONFIG));

        try (PeftAdapter disk = PeftAdapter.open(client);
                PeftAdapter memory = PeftAdapter.read(MemorySegment.ofArray(weights), config, "s3a://bucket/client")) {
            assertEquals(List.copyOf(disk.tensors().keySet()), List.copyOf(memory.tensors().keySet()));
            for (var e : disk.tensors().entrySet()) {
                Tensor t = memory.tensors().get(e.getKey());
                assertEquals(e.getValue().dtype(), t.dtype());
                assertTrue(Arrays.equals(e.getValue().shape(), t.shape()));
                assertEquals(-1, e.getValue().data().mismatch(t.data()), e.getKey());
                assertTrue(t.data().heapBase().orElseThrow() == weights, "views into the caller's bytes");
            }
            assertEquals(disk.metadata(), memory.metadata());
            assertEquals(disk.byteSize(), memory.byteSize());
            assertEquals(disk.config().toJson(), memory.config().toJson());
            assertEquals(disk.config().scale(), memory.config().scale());
            assertNull(memory.source());
            ClientUpdate update = memory.toUpdate("c1", 3);
            assertEquals("s3a://bucket/client", update.source());
            assertEquals(disk.config().scale(), update.scale());
        }
        try (PeftAdapter bare = PeftAdapter.read(MemorySegment.ofArray(weights), null, "mem:c2")) {
            assertNull(bare.config());
            assertNull(bare.toUpdate("c2", 1).scale());
        }
    }

    @Test
    void badPartsAreNamedUnderTheCallersName() throws Exception {
        Path file = dir.resolve("w.safetensors");
        Safetensors.write(file, tensors(), Map.of());
        byte[] weights = Files.readAllBytes(file);
        MemorySegment good = MemorySegment.ofArray(weights);

        assertRefused("hdfs://nn/c/adapter_config.json: invalid JSON", good, "{\"r\": 4,".getBytes(StandardCharsets.UTF_8));
        assertRefused("hdfs://nn/c/adapter_config.json: is not valid UTF-8 (byte 0xC3 at offset 2)", good, new byte[] {'{', '"', (byte) 0xC3, '"', '}'});
        assertRefused("hdfs://nn/c/adapter_config.json: is not a JSON object", good, "[1]".getBytes(StandardCharsets.UTF_8));
        assertRefused("hdfs://nn/c/adapter_model.safetensors: ",
                MemorySegment.ofArray(Arrays.copyOf(weights, weights.length - 1)), null);
        Map<String, Tensor> noLora = Map.of("head.weight", Tensor.of(new float[] {1}, 1));
        Safetensors.write(file, noLora, Map.of());
        assertRefused("hdfs://nn/c/adapter_model.safetensors: no LoRA factors", MemorySegment.ofArray(Files.readAllBytes(file)), null);
    }

    static void assertRefused(String start, MemorySegment weights, byte[] config) {
        InvalidFileException e = assertThrows(InvalidFileException.class, () -> PeftAdapter.read(weights, config, "hdfs://nn/c"));
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
    }
}
