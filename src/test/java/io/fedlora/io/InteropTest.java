package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fedlora.tensor.DType;
import io.fedlora.LoraScale;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Interoperability with an independent implementation of the format: a python3 script that
 * uses only the standard library's json and struct modules (no safetensors, no torch), reading
 * what fedlora writes and writing a PEFT adapter that fedlora reads. Skipped, with a message,
 * where there is no python3.
 */
class InteropTest {

    @TempDir
    Path dir;

    static boolean python;

    @BeforeAll
    static void findPython() {
        try {
            Process p = new ProcessBuilder("python3", "--version").redirectErrorStream(true).start();
            python = p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (IOException | InterruptedException e) {
            python = false;
        }
    }

    static String runPython(String script, String... args) throws Exception {
        assumeTrue(python, "python3 not found: skipping the interoperability check");
        List<String> command = new java.util.ArrayList<>(List.of("python3", "-c", script));
        command.addAll(List.of(args));
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("python3 timed out");
        }
        assertEquals(0, p.exitValue(), output);
        return output;
    }

    /** Reads a safetensors file with json + struct and prints {name: {dtype, shape, values}} as JSON. */
    static final String READER = """
            import json, struct, sys
            data = open(sys.argv[1], 'rb').read()
            (n,) = struct.unpack('<Q', data[:8])
            assert n % 8 == 0, 'header length %d not a multiple of 8' % n
            header = json.loads(data[8:8 + n].decode('utf-8'))
            body = data[8 + n:]
            out = {'__metadata__': header.pop('__metadata__', None)}
            end = 0
            for name, info in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
                begin, stop = info['data_offsets']
                assert begin == end, 'gap or overlap before ' + name
                end = stop
                raw = body[begin:stop]
                count = 1
                for d in info['shape']:
                    count *= d
                if info['dtype'] == 'F32':
                    values = list(struct.unpack('<%df' % count, raw))
                elif info['dtype'] == 'F16':
                    values = list(struct.unpack('<%de' % count, raw))
                elif info['dtype'] == 'BF16':
                    halves = struct.unpack('<%dH' % count, raw)
                    values = [struct.unpack('<f', struct.pack('<I', h << 16))[0] for h in halves]
                else:
                    raise SystemExit('unexpected dtype ' + info['dtype'])
                out[name] = {'dtype': info['dtype'], 'shape': info['shape'], 'values': values}
            assert end == len(body), 'data section not fully used'
            print(json.dumps(out))
            """;

    @Test
    void pythonReadsWhatFedloraWrites() throws Exception {
        float[] a = {0.5f, -1.25f, 3.0e-5f, 1e30f, -0.0f, 7f};
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("base_model.model.q.lora_A.weight", Tensor.of(a.clone(), 2, 3));
        tensors.put("base_model.model.q.lora_B.weight", Tensor.convert(new float[] {1.5f, -2f, 0.1f, 3f}, DType.BF16, 4, 1));
        tensors.put("base_model.model.q.bias", Tensor.convert(new float[] {0.333f, 65504f, -1f}, DType.F16, 3));
        Path file = dir.resolve("adapter_model.safetensors");
        Safetensors.write(file, tensors, Map.of("format", "pt", "note", "ünïcode"));

        JsonNode read = new ObjectMapper().readTree(runPython(READER, file.toString()));
        assertEquals("pt", read.get("__metadata__").get("format").asText());
        assertEquals("ünïcode", read.get("__metadata__").get("note").asText());
        for (var e : tensors.entrySet()) {
            JsonNode t = read.get(e.getKey());
            assertEquals(e.getValue().dtype().safetensorsName(), t.get("dtype").asText());
            assertEquals(e.getValue().shape()[0], t.get("shape").get(0).asLong());
            float[] expected = e.getValue().toFloatArray();
            float[] actual = new float[expected.length];
            for (int i = 0; i < actual.length; i++) {
                actual[i] = (float) t.get("values").get(i).asDouble();
            }
            assertArrayEquals(expected, actual, e.getKey());
        }
    }

    /**
     * Writes a PEFT adapter directory the way PEFT lays one out (rank_pattern, alpha_pattern,
     * rsLoRA off, BF16 and F32 tensors, sorted keys, a non-LoRA tensor), packing the file with struct.
     */
    static final String WRITER = """
            import json, struct, sys, os
            out = sys.argv[1]
            os.makedirs(out)
            def bf16(x):
                bits = struct.unpack('<I', struct.pack('<f', x))[0]
                bits += 0x7fff + ((bits >> 16) & 1)
                return struct.pack('<H', (bits >> 16) & 0xffff)
            tensors = {}
            def add(name, dtype, shape, values):
                if dtype == 'F32':
                    raw = struct.pack('<%df' % len(values), *values)
                else:
                    raw = b''.join(bf16(v) for v in values)
                tensors[name] = (dtype, shape, raw)
            p = 'base_model.model.model.layers.0.self_attn.'
            add(p + 'q_proj.lora_A.weight', 'F32', [4, 3], [i / 8 for i in range(12)])
            add(p + 'q_proj.lora_B.weight', 'F32', [2, 4], [-i / 4 for i in range(8)])
            add(p + 'v_proj.lora_A.weight', 'BF16', [2, 3], [1.5, -2.0, 0.25, 3.0, 0.125, -1.0])
            add(p + 'v_proj.lora_B.weight', 'BF16', [2, 2], [0.5, 0.75, -0.5, 2.0])
            add('base_model.model.score.weight', 'F32', [2], [1.0, 2.0])
            header = {'__metadata__': {'format': 'pt'}}
            offset = 0
            blobs = []
            for name in sorted(tensors):
                dtype, shape, raw = tensors[name]
                header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [offset, offset + len(raw)]}
                offset += len(raw)
                blobs.append(raw)
            text = json.dumps(header, separators=(',', ':')).encode('utf-8')
            text += b' ' * (-len(text) % 8)
            with open(os.path.join(out, 'adapter_model.safetensors'), 'wb') as f:
                f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))
            config = {'peft_type': 'LORA', 'r': 2, 'lora_alpha': 16, 'use_rslora': False,
                      'rank_pattern': {'model.layers.0.self_attn.q_proj': 4},
                      'alpha_pattern': {'q_proj': 32},
                      'target_modules': ['q_proj', 'v_proj'], 'base_model_name_or_path': 'tiny'}
            with open(os.path.join(out, 'adapter_config.json'), 'w') as f:
                json.dump(config, f, indent=2)
            """;

    @Test
    void fedloraReadsAPeftDirectoryWrittenByPython() throws Exception {
        Path adapterDir = dir.resolve("python-adapter");
        runPython(WRITER, adapterDir.toString());
        try (PeftAdapter adapter = PeftAdapter.open(adapterDir)) {
            String p = "base_model.model.model.layers.0.self_attn.";
            Tensor qa = adapter.tensors().get(p + "q_proj.lora_A.weight");
            assertArrayEquals(new long[] {4, 3}, qa.shape());
            float[] expectedQa = new float[12];
            for (int i = 0; i < 12; i++) {
                expectedQa[i] = i / 8f;
            }
            assertArrayEquals(expectedQa, qa.toFloatArray());
            Tensor vb = adapter.tensors().get(p + "v_proj.lora_B.weight");
            assertEquals(DType.BF16, vb.dtype());
            assertArrayEquals(new float[] {0.5f, 0.75f, -0.5f, 2.0f}, vb.toFloatArray());
            assertEquals(Map.of("model.layers.0.self_attn.q_proj", 4, "model.layers.0.self_attn.v_proj", 2),
                    PeftAdapter.moduleRanks(adapter.tensors()));

            AdapterConfig config = adapter.config();
            assertEquals(2, config.r());
            assertEquals(Map.of("model.layers.0.self_attn.q_proj", 4), config.rankPattern());
            // PEFT's pattern rule: alpha_pattern 'q_proj' matches the q_proj module only.
            LoraScale scale = config.scale();
            assertEquals(32.0 / 4, scale.of(p + "q_proj", 4));
            assertEquals(16.0 / 2, scale.of(p + "v_proj", 2));
            assertNull(PeftAdapter.modulePrefix("base_model.model.score.weight"));
        }
    }

    @Test
    void aPeftDirectoryWrittenByFedloraReadsBackInPython() throws Exception {
        Path adapterDir = dir.resolve("fedlora-adapter");
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("base_model.model.l.q.lora_A.weight", Tensor.of(new float[] {1, 2, 3, 4, 5, 6}, 3, 2));
        tensors.put("base_model.model.l.q.lora_B.weight", Tensor.of(new float[] {1, 2, 3}, 1, 3));
        tensors.put("base_model.model.l.v.lora_A.weight", Tensor.of(new float[] {1, 2}, 1, 2));
        tensors.put("base_model.model.l.v.lora_B.weight", Tensor.of(new float[] {9}, 1, 1));
        PeftAdapter.write(adapterDir, tensors, DType.BF16, null, Map.of(), 3);
        JsonNode read = new ObjectMapper().readTree(runPython(READER, adapterDir.resolve(PeftAdapter.WEIGHTS).toString()));
        assertEquals("BF16", read.get("base_model.model.l.q.lora_A.weight").get("dtype").asText());
        assertEquals(6.0, read.get("base_model.model.l.q.lora_A.weight").get("values").get(5).asDouble());
        JsonNode config = new ObjectMapper().readTree(Files.readString(adapterDir.resolve(PeftAdapter.CONFIG)));
        assertEquals(3, config.get("r").asInt());
        assertEquals(1, config.get("rank_pattern").get("l.v").asInt());
        assertEquals("LORA", config.get("peft_type").asText());
    }
}
