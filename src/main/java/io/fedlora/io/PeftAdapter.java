package io.fedlora.io;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.PeftKeys;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import java.util.stream.Stream;

/**
 * A HuggingFace PEFT LoRA adapter on disk: a directory holding {@code adapter_model.safetensors}
 * and {@code adapter_config.json}, or a bare {@code .safetensors} file (whose config, if an
 * {@code adapter_config.json} sits beside it, is read too). The tensors are views into the
 * memory-mapped file, valid until {@link #close()}.
 *
 * <p>Tensor keys are PEFT's ({@code base_model.model.<module>.lora_A.weight}); the ranks come from
 * the shapes, so adapters saved with a {@code rank_pattern} need nothing special.
 */
public final class PeftAdapter implements AutoCloseable {

    public static final String WEIGHTS = "adapter_model.safetensors";
    public static final String CONFIG = "adapter_config.json";

    /** The prefix PeftModel puts before the base model's module names in saved keys. */


    private final Path source;
    private final Safetensors weights;
    private final AdapterConfig config;
    /** For an adapter {@linkplain #read read from memory}: the name the caller gave it (null for files). */
    private String name;

    private PeftAdapter(Path source, Safetensors weights, AdapterConfig config) {
        this.source = source;
        this.weights = weights;
        this.config = config;
    }

    /**
     * Opens a PEFT adapter directory or a bare safetensors file.
     *
     * @throws InvalidFileException naming the file and the problem
     */
    public static PeftAdapter open(Path path) throws IOException {
        Path weightsFile;
        Path configFile;
        if (Files.isDirectory(path)) {
            weightsFile = path.resolve(WEIGHTS);
            configFile = path.resolve(CONFIG);
            if (!Files.isRegularFile(weightsFile)) {
                String hint = Files.exists(path.resolve("adapter_model.bin"))
                        ? " (only adapter_model.bin, a pickle: save the adapter with safe_serialization=True)" : "";
                throw new InvalidFileException(path.toString(), "no " + WEIGHTS + " in this directory" + hint);
            }
        } else if (Files.isRegularFile(path)) {
            weightsFile = path;
            Path parent = path.toAbsolutePath().getParent();
            configFile = parent == null ? null : parent.resolve(CONFIG);
        } else {
            throw new InvalidFileException(path.toString(), Files.exists(path)
                    ? "is neither a directory nor a regular file" : "no such file or directory");
        }
        AdapterConfig config = configFile != null && Files.isRegularFile(configFile)
                ? AdapterConfig.read(configFile) : null;
        Safetensors weights = Safetensors.open(weightsFile);
        try {
            if (moduleRanks(weights.tensors()).isEmpty()) {
                throw new InvalidFileException(weightsFile.toString(),
                        "no LoRA factors (no key ends in .lora_A.weight or .lora_B.weight)");
            }
            return new PeftAdapter(path, weights, config);
        } catch (Throwable t) {
            weights.close();
            throw t;
        }
    }

    /**
     * A PEFT adapter held in memory, e.g. fetched from object storage: {@code weights} is a whole
     * {@code adapter_model.safetensors} (heap or native; the tensors are views into it, so it must
     * outlive the adapter) and {@code config} the bytes of its {@code adapter_config.json}, or null
     * when it has none. {@code source} names the adapter (a URI, say) in error messages and in
     * {@link #toUpdate}; the two parts are named {@code source/adapter_model.safetensors} and
     * {@code source/adapter_config.json}. {@link #source()} is null for such an adapter.
     *
     * @throws InvalidFileException naming the part and the problem, as {@link #open} does
     */
    public static PeftAdapter read(MemorySegment weights, byte[] config, String source) throws InvalidFileException {
        AdapterConfig parsed = config == null ? null : AdapterConfig.parse(config, source + "/" + CONFIG);
        String weightsName = source + "/" + WEIGHTS;
        Safetensors tensors = Safetensors.read(weights, weightsName);
        if (moduleRanks(tensors.tensors()).isEmpty()) {
            throw new InvalidFileException(weightsName, "no LoRA factors (no key ends in .lora_A.weight or .lora_B.weight)");
        }
        PeftAdapter adapter = new PeftAdapter(null, tensors, parsed);
        adapter.name = source;
        return adapter;
    }

    /** The directory or file this adapter was opened from; null for one {@linkplain #read read from memory}. */
    public Path source() {
        return source;
    }

    /** Tensors by PEFT key, in file order; views into the mapping. */
    public Map<String, Tensor> tensors() {
        return weights.tensors();
    }

    /** The {@code __metadata__} of the safetensors file. */
    public Map<String, String> metadata() {
        return weights.metadata();
    }

    /** The config, or null for a bare safetensors file with no adapter_config.json beside it. */
    public AdapterConfig config() {
        return config;
    }

    /** Size of the safetensors file in bytes. */
    public long byteSize() {
        return weights.byteSize();
    }

    /** A client update over this adapter's tensors, with PEFT's scale when the config is known. */
    public ClientUpdate toUpdate(String clientId, double weight) {
        ClientUpdate update = ClientUpdate.of(clientId, weight, tensors()).withSource(name != null ? name : source.toString());
        return config == null ? update : update.withScale(config.scale());
    }

    /** Reads the whole file into memory now (page faults up front) rather than on first use. */
    public void load() {
        weights.load();
    }

    /** Unmaps the file; the tensors must not be used afterwards. */
    @Override
    public void close() {
        weights.close();
    }

    /** The module name in the base model for a key or module prefix: without {@code base_model.model.}. */
    public static String baseModelName(String key) {
        return PeftKeys.baseModelName(key);
    }

    /** The module prefix of a LoRA factor key, or null if {@code key} is not a LoRA factor. */
    public static String modulePrefix(String key) {
        PeftKeys.Key parsed = PeftKeys.parse(key);
        return parsed == null ? null : parsed.module();
    }

    /**
     * The rank of each LoRA module (base-model name -> rank), from the A factor's rows, or the B
     * factor's columns where A is absent; in key order.
     */
    public static Map<String, Integer> moduleRanks(Map<String, Tensor> tensors) {
        Map<String, Integer> ranks = new LinkedHashMap<>();
        tensors.forEach((key, t) -> {
            PeftKeys.Key parsed = PeftKeys.parse(key);
            if (parsed == null || t.rank() != 2) {
                return;
            }
            String module = baseModelName(parsed.module());
            if (parsed.factor() == Aggregator.Factor.A) {
                ranks.put(module, (int) t.dim(0));
            } else {
                ranks.putIfAbsent(module, (int) t.dim(1));
            }
        });
        return ranks;
    }

    /**
     * Writes a PEFT adapter directory: {@code adapter_model.safetensors} with the tensors converted
     * to {@code dtype} (null: as they are), and {@code adapter_config.json} = {@code base} (the first client's config,
     * or a minimal one when null) with {@code r = globalRank} and a {@code rank_pattern} for the
     * modules whose rank differs.
     *
     * <p>Everything is written into a hidden temporary directory beside {@code outDir}, then
     * renamed to it (or, when {@code outDir} already exists and is not empty, its two files are
     * renamed into it). On failure the temporary directory is removed and {@code outDir} is
     * untouched.
     */
    public static void write(Path outDir, Map<String, Tensor> tensors, DType dtype, AdapterConfig base,
            Map<String, String> metadata, int globalRank) throws IOException {
        Path target = outDir.toAbsolutePath().normalize();
        Path parent = target.getParent();
        if (parent == null || !Files.isDirectory(parent)) {
            throw new InvalidFileException(outDir.toString(), "parent directory does not exist");
        }
        if (Files.exists(target) && !Files.isDirectory(target)) {
            throw new InvalidFileException(outDir.toString(), "exists and is not a directory");
        }
        Map<String, Tensor> converted = new LinkedHashMap<>();
        tensors.forEach((key, t) -> converted.put(key, dtype == null ? t : t.to(dtype)));
        AdapterConfig config = (base == null ? AdapterConfig.minimal(globalRank) : base)
                .withRanks(globalRank, moduleRanks(converted));
        Map<String, String> meta = new LinkedHashMap<>(metadata == null ? Map.of() : metadata);
        // transformers refuses safetensors files whose metadata lacks a known format.
        meta.putIfAbsent("format", "pt");

        Path temp = parent.resolve("." + target.getFileName() + ".tmp-"
                + HexFormat.of().toHexDigits(ThreadLocalRandom.current().nextLong()));
        Files.createDirectory(temp);
        boolean published = false;
        try {
            Safetensors.write(temp.resolve(WEIGHTS), converted, meta);
            writeText(temp.resolve(CONFIG), config.toJson());
            publish(temp, target);
            published = true;
        } finally {
            try {
                deleteTree(temp);
            } catch (IOException e) {
                // Never hide the failure that got us here behind a cleanup failure.
                if (published) {
                    throw e;
                }
            }
        }
    }

    private static void publish(Path temp, Path target) throws IOException {
        if (!Files.isDirectory(target) || isEmptyDirectory(target)) {
            // rename(2) also replaces an empty directory.
            Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
            return;
        }
        // An existing adapter directory: replace our two files in it, each atomically, and leave
        // anything else there (a README, a tokenizer) alone.
        for (String name : List.of(WEIGHTS, CONFIG)) {
            Files.move(temp.resolve(name), target.resolve(name),
                    StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        }
    }

    private static boolean isEmptyDirectory(Path dir) throws IOException {
        try (Stream<Path> entries = Files.list(dir)) {
            return entries.findAny().isEmpty();
        }
    }

    private static void writeText(Path file, String text) throws IOException {
        try (FileChannel channel = FileChannel.open(file, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            ByteBuffer bytes = ByteBuffer.wrap(text.getBytes(StandardCharsets.UTF_8));
            while (bytes.hasRemaining()) {
                channel.write(bytes);
            }
            channel.force(true);
        }
    }

    private static void deleteTree(Path root) throws IOException {
        if (!Files.exists(root)) {
            return;
        }
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }
}
