package io.fedlora.spark;

import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.io.Safetensors;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * Synthetic PEFT clients for the tests and the measurements: {@code count} adapter directories of
 * mixed ranks (2, 4, 8, 16) and dtypes (F32, BF16, F16), each with {@code layers} x (q_proj,
 * v_proj) LoRA modules of {@code hidden} features, one non-LoRA tensor (a classifier head, as
 * PEFT's {@code modules_to_save} would hold), an {@code adapter_config.json} with
 * {@code lora_alpha = 16}, and a manifest {@code manifest.csv} with weights 1..50.
 * Everything follows from the seed.
 *
 * <pre>{@code java -cp ... io.fedlora.spark.GenerateClients DIR COUNT [HIDDEN [LAYERS [SEED]]]}</pre>
 */
public final class GenerateClients {

    static final int[] RANKS = {2, 4, 8, 16};
    static final DType[] DTYPES = {DType.F32, DType.BF16, DType.F16};
    static final String MANIFEST = "manifest.csv";

    private GenerateClients() {
    }

    /** One generated client: its directory and weight. */
    public record Client(String id, Path dir, double weight, int rank, DType dtype) {
    }

    public static void main(String[] args) throws IOException {
        if (args.length < 2) {
            System.err.println("usage: GenerateClients DIR COUNT [HIDDEN [LAYERS [SEED]]]");
            System.exit(2);
        }
        Path dir = Path.of(args[0]);
        int count = Integer.parseInt(args[1]);
        int hidden = args.length > 2 ? Integer.parseInt(args[2]) : 64;
        int layers = args.length > 3 ? Integer.parseInt(args[3]) : 2;
        long seed = args.length > 4 ? Long.parseLong(args[4]) : 1;
        List<Client> clients = write(dir, count, hidden, layers, seed);
        long bytes = 0;
        for (Client c : clients) {
            bytes += Files.size(c.dir().resolve(PeftAdapter.WEIGHTS));
        }
        System.out.printf(Locale.ROOT, "%d clients, %.1f MB of safetensors, manifest %s%n",
                clients.size(), bytes / 1e6, dir.resolve(MANIFEST));
    }

    /** Writes the clients and {@code dir/manifest.csv} (relative paths); returns the clients in manifest order. */
    public static List<Client> write(Path dir, int count, int hidden, int layers, long seed) throws IOException {
        Files.createDirectories(dir);
        List<Client> clients = new ArrayList<>();
        StringBuilder manifest = new StringBuilder("client_id,path_or_uri,weight\n");
        for (int k = 0; k < count; k++) {
            SplittableRandom random = new SplittableRandom(seed * 1_000_003L + k);
            String id = String.format(Locale.ROOT, "client-%05d", k);
            int rank = RANKS[random.nextInt(RANKS.length)];
            DType dtype = DTYPES[k % DTYPES.length];
            double weight = 1 + random.nextInt(50);
            Path clientDir = dir.resolve(id);
            Files.createDirectories(clientDir);
            Safetensors.write(clientDir.resolve(PeftAdapter.WEIGHTS), tensors(random, rank, hidden, layers, dtype),
                    Map.of("format", "pt"));
            Files.writeString(clientDir.resolve(PeftAdapter.CONFIG), config(rank).toJson(), StandardCharsets.UTF_8);
            manifest.append(id).append(',').append(id).append(',').append((long) weight).append('\n');
            clients.add(new Client(id, clientDir, weight, rank, dtype));
        }
        Files.writeString(dir.resolve(MANIFEST), manifest, StandardCharsets.UTF_8);
        return clients;
    }

    static Map<String, Tensor> tensors(SplittableRandom random, int rank, int hidden, int layers, DType dtype) {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (int layer = 0; layer < layers; layer++) {
            for (String proj : List.of("q_proj", "v_proj")) {
                String module = "base_model.model.layers." + layer + ".self_attn." + proj;
                tensors.put(module + ".lora_A.weight", Tensor.convert(values(random, rank * hidden, 0.1), dtype, rank, hidden));
                tensors.put(module + ".lora_B.weight", Tensor.convert(values(random, hidden * rank, 0.01), dtype, hidden, rank));
            }
        }
        tensors.put("base_model.model.classifier.weight", Tensor.convert(values(random, 4 * hidden, 0.05), dtype, 4, hidden));
        return tensors;
    }

    static AdapterConfig config(int rank) throws IOException {
        Map<String, Object> json = new LinkedHashMap<>();
        json.put("peft_type", "LORA");
        json.put("base_model_name_or_path", "synthetic");
        json.put("r", (long) rank);
        json.put("lora_alpha", 16L);
        json.put("target_modules", List.of("q_proj", "v_proj"));
        json.put("modules_to_save", List.of("classifier"));
        return AdapterConfig.of(json, "generated config");
    }

    private static float[] values(SplittableRandom random, int count, double scale) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) ((random.nextDouble() * 2 - 1) * scale);
        }
        return v;
    }
}
