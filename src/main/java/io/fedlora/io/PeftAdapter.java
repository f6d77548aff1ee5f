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
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.FileTime;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

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



    private final Path source;
    private final Path weightsFile;
    private final Safetensors weights;
    private final AdapterConfig config;
    /** For an adapter {@linkplain #read read from memory}: the name the caller gave it (null for files). */
    private String name;

    private final FileTime modifiedAtOpen;

    private PeftAdapter(Path source, Path weightsFile, Safetensors weights, AdapterConfig config, FileTime modifiedAtOpen) {
        this.modifiedAtOpen = modifiedAtOpen;
        this.source = source;
        this.weightsFile = weightsFile;
        this.weights = weights;
        this.config = config;
    }

    /** Where a client's files are: the weights file, and the config beside it (null when there is none). */
    public record Location(Path client, Path weights, Path config) {
    }

    /**
     * Finds a client's files without reading them: {@code client} is a PEFT directory or a bare
     * safetensors file. Everything that is not a readable regular file where one is needed is
     * reported as what it is (a directory, a FIFO, a dangling link, a link loop).
     *
     * @throws InvalidFileException naming the file and the problem
     */
    public static Location locate(Path client) throws InvalidFileException {
        BasicFileAttributes attributes = attributes(client, client.toString());
        if (attributes.isDirectory()) {
            Path weights = client.resolve(WEIGHTS);
            if (!Files.exists(weights, LinkOption.NOFOLLOW_LINKS)) {
                String hint = Files.exists(client.resolve("adapter_model.bin"))
                        ? " (only adapter_model.bin, a pickle: save the adapter with safe_serialization=True)" : "";
                throw new InvalidFileException(client.toString(), "no " + WEIGHTS + " in this directory" + hint);
            }
            checkRegularFile(weights);
            Path config = client.resolve(CONFIG);
            return new Location(client, weights, Files.exists(config, LinkOption.NOFOLLOW_LINKS) ? checkRegularFile(config) : null);
        }
        checkRegularFile(client);
        Path config = client.getParent() == null ? Path.of(CONFIG) : client.getParent().resolve(CONFIG);
        return new Location(client, client, Files.exists(config, LinkOption.NOFOLLOW_LINKS) ? checkRegularFile(config) : null);
    }

    /** The attributes of {@code path} through links, with a link that leads nowhere reported as such. */
    private static BasicFileAttributes attributes(Path path, String display) throws InvalidFileException {
        try {
            return Files.readAttributes(path, BasicFileAttributes.class);
        } catch (NoSuchFileException e) {
            if (Files.isSymbolicLink(path)) {
                String to;
                try {
                    to = Files.readSymbolicLink(path).toString();
                } catch (IOException unreadable) {
                    to = "?";
                }
                throw new InvalidFileException(display, "is a symbolic link to " + to + ", which does not exist", e);
            }
            throw new InvalidFileException(display, "no such file or directory", e);
        } catch (AccessDeniedException e) {
            throw new InvalidFileException(display, "permission denied", e);
        } catch (FileSystemException e) {
            String reason = e.getReason() == null ? "" : e.getReason();
            if (reason.contains("symbolic links")) {
                throw new InvalidFileException(display, "is a symbolic link loop (" + reason + ")", e);
            }
            throw new InvalidFileException(display, "cannot read: " + Messages.reason(e), e);
        } catch (IOException e) {
            throw new InvalidFileException(display, "cannot read: " + Messages.reason(e), e);
        }
    }

    /** {@code file} if it is a readable regular file (through links); else what it is. */
    static Path checkRegularFile(Path file) throws InvalidFileException {
        String display = file.toString();
        BasicFileAttributes attributes = attributes(file, display);
        if (attributes.isDirectory()) {
            throw new InvalidFileException(display, "is a directory, not a file");
        }
        if (!attributes.isRegularFile()) {
            throw new InvalidFileException(display, "is " + specialKind(file) + ", not a regular file");
        }
        if (!Files.isReadable(file)) {
            throw new InvalidFileException(display, "permission denied");
        }
        return file;
    }

    private static String specialKind(Path file) {
        try {
            int type = ((Integer) Files.getAttribute(file, "unix:mode")) & 0170000;
            return switch (type) {
                case 0010000 -> "a FIFO (named pipe)";
                case 0140000 -> "a socket";
                case 0020000 -> "a character device";
                case 0060000 -> "a block device";
                default -> "a special file";
            };
        } catch (IOException | RuntimeException e) {
            return "a special file (FIFO, socket or device)";
        }
    }

    /**
     * Opens a PEFT adapter directory or a bare safetensors file.
     *
     * @throws InvalidFileException naming the file and the problem
     */
    public static PeftAdapter open(Path path) throws IOException {
        return open(path, true);
    }

    /**
     * Opens a PEFT adapter directory or a bare safetensors file, memory-mapped ({@code mapped}) or
     * read into memory of its own ({@link Safetensors#readCopy}).
     */
    public static PeftAdapter open(Path path, boolean mapped) throws IOException {
        Location location = locate(path);
        AdapterConfig config = location.config() != null ? AdapterConfig.read(location.config()) : null;
        Path weightsFile = location.weights();
        FileTime modified;
        try {
            modified = Files.getLastModifiedTime(weightsFile);
        } catch (IOException e) {
            throw new InvalidFileException(weightsFile.toString(), "cannot read: " + Messages.reason(e), e);
        }
        Safetensors weights = mapped ? Safetensors.open(weightsFile) : Safetensors.readCopy(weightsFile);
        try {
            if (moduleRanks(weights.tensors()).isEmpty()) {
                throw new InvalidFileException(weightsFile.toString(),
                        "no LoRA factors (no key ends in .lora_A.weight or .lora_B.weight)");
            }
            return new PeftAdapter(path, weightsFile, weights, config, modified);
        } catch (Throwable t) {
            weights.close();
            throw t;
        }
    }

    /**
     * After an I/O fault while reading the mapped file: what changed about it since it was
     * opened ("shrank from N to M bytes", "was removed"), or null if nothing visible did.
     */
    public String changeSinceOpen() {
        if (weightsFile == null) {
            return null; // read from memory: no file to change
        }
        try {
            long now = Files.size(weightsFile);
            if (now != weights.byteSize()) {
                return "changed while being read: it was " + weights.byteSize() + " bytes and is now " + now;
            }
            FileTime modified = Files.getLastModifiedTime(weightsFile);
            return modified.equals(modifiedAtOpen) ? null : "changed while being read: modified at " + modified;
        } catch (IOException e) {
            return "changed while being read: " + Messages.reason(e);
        }
    }

    /** The safetensors file of this adapter. */
    public Path weightsFile() {
        return weightsFile;
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
        PeftAdapter adapter = new PeftAdapter(null, null, tensors, parsed, null);
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

    /** In and out features of each LoRA module (base-model name -> {in, out}), from the A and B shapes. */
    public static Map<String, long[]> moduleFeatures(Map<String, Tensor> tensors) {
        Map<String, long[]> features = new LinkedHashMap<>();
        tensors.forEach((key, t) -> {
            PeftKeys.Key parsed = PeftKeys.parse(key);
            if (parsed == null || t.rank() != 2) {
                return;
            }
            long[] f = features.computeIfAbsent(baseModelName(parsed.module()), m -> new long[2]);
            if (parsed.factor() == Aggregator.Factor.A) {
                f[0] = t.dim(1);
            } else {
                f[1] = t.dim(0);
            }
        });
        return features;
    }

    /**
     * Writes a PEFT adapter directory for tests and the demo: {@code base} (or a minimal config)
     * with {@code r = globalRank} and a {@code rank_pattern} for the modules whose rank differs,
     * replacing an existing adapter at {@code outDir}. See {@link #write(Path, String, boolean, Map, DType, AdapterConfig, Map)}.
     */
    public static void write(Path outDir, Map<String, Tensor> tensors, DType dtype, AdapterConfig base,
            Map<String, String> metadata, int globalRank) throws IOException {
        AdapterConfig config = (base == null ? AdapterConfig.minimal(globalRank) : base)
                .withRanks(globalRank, moduleRanks(tensors));
        write(outDir, outDir.toString(), true, tensors, dtype, config, metadata);
    }

    /**
     * Writes a PEFT adapter directory: {@code adapter_model.safetensors} with the tensors
     * converted to {@code dtype} (null: as they are) and {@code config} as
     * {@code adapter_config.json}, published whole through {@link OutputDir}: at {@code outDir}
     * there is the old content or the complete new one, never a mix, and a failure leaves nothing
     * behind. Every error names {@code display} ({@code -o} as the user wrote it), never the
     * temporary directory.
     *
     * @param force replace an existing adapter directory
     * @throws InvalidFileException for a value that overflows {@code dtype} (before anything is
     *     created), an output that cannot be replaced, or an I/O failure while writing
     */
    public static void write(Path outDir, String display, boolean force, Map<String, Tensor> tensors, DType dtype,
            AdapterConfig config, Map<String, String> metadata) throws IOException {
        Map<String, Tensor> converted = new LinkedHashMap<>();
        long bytes = 0;
        for (var e : tensors.entrySet()) {
            Tensor t = dtype == null ? e.getValue() : e.getValue().to(dtype);
            if (t.dtype() != DType.F32) {
                checkRange(display, e.getKey(), e.getValue(), t);
            }
            converted.put(e.getKey(), t);
            bytes += t.data().byteSize();
        }
        Map<String, String> meta = new LinkedHashMap<>(metadata == null ? Map.of() : metadata);
        // transformers refuses safetensors files whose metadata lacks a known format.
        meta.putIfAbsent("format", "pt");
        try (OutputDir out = OutputDir.create(outDir, display, force)) {
            try {
                Safetensors.write(out.directory().resolve(WEIGHTS), converted, meta);
                writeText(out.directory().resolve(CONFIG), config.toJson());
                out.publish();
            } catch (InvalidFileException e) {
                throw e;
            } catch (IOException e) {
                if (Messages.isNoSpace(e)) {
                    throw new InvalidFileException(display, "no space left on device while writing the "
                            + String.format(java.util.Locale.ROOT, "%.1f MB", bytes / 1e6)
                            + " adapter; nothing was written", e);
                }
                throw new InvalidFileException(display, "cannot write: " + Messages.reason(e), e);
            }
        }
    }

    /**
     * A finite value that became infinite in {@code converted} (float16 above 65504, bfloat16
     * near float32's limit) is refused, naming the tensor and its largest magnitude.
     */
    private static void checkRange(String display, String key, Tensor source, Tensor converted) throws InvalidFileException {
        long n = converted.elementCount();
        for (long i = 0; i < n; i++) {
            if (Float.isInfinite(converted.get(i)) && Float.isFinite(source.get(i))) {
                float largest = 0;
                for (long j = 0; j < n; j++) {
                    float v = Math.abs(source.get(j));
                    if (v > largest) {
                        largest = v;
                    }
                }
                throw new InvalidFileException(display, "tensor '" + key + "' holds values up to " + largest
                        + " in magnitude, beyond " + converted.dtype().name().toLowerCase(java.util.Locale.ROOT)
                        + "'s range (largest finite " + (converted.dtype() == DType.F16 ? "65504); use --dtype bf16 or f32"
                                : "3.39e38); use --dtype f32") + "; nothing was written");
            }
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
}
