package io.fedlora.io;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadFeature;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;

/**
 * The safetensors format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * ({@code name -> {dtype, shape, data_offsets}} plus an optional {@code __metadata__} map of
 * strings), then the data section, which the tensors must cover exactly, without overlap or gap
 * (as the reference Rust reader requires, so that a file cannot hide extra bytes).
 *
 * <p>An opened file is memory-mapped into a shared {@link Arena} that this handle owns; its
 * tensors are views into the mapping (no copy) and stay valid until {@link #close()}. The
 * mapping is shared, not confined, because the aggregator reads it from several threads.
 */
public final class Safetensors implements AutoCloseable {

    /** The largest header accepted, as in the reference implementation: 100 MB. */
    public static final long MAX_HEADER_BYTES = 100_000_000L;

    /** More dimensions than any real tensor has; bounds the memory a hostile header can claim. */
    static final int MAX_DIMS = 64;

    private static final ValueLayout.OfLong LONG_LE =
            ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private static final JsonFactory JSON = JsonFactory.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .build();

    private final String source;
    private final Arena arena;
    private final Map<String, Tensor> tensors;
    private final Map<String, String> metadata;
    private final long byteSize;

    private final MemorySegment mapping;

    private Safetensors(String source, Arena arena, MemorySegment mapping, Map<String, Tensor> tensors,
            Map<String, String> metadata, long byteSize) {
        this.source = source;
        this.mapping = mapping;
        this.arena = arena;
        this.tensors = Collections.unmodifiableMap(tensors);
        this.metadata = Collections.unmodifiableMap(metadata);
        this.byteSize = byteSize;
    }

    /** One parsed header entry, before it is checked against the data section. */
    record Entry(String name, String dtype, long[] shape, long begin, long end) {
    }

    /** A parsed header: entries in file order and the {@code __metadata__} map (may be empty). */
    record Header(List<Entry> entries, Map<String, String> metadata) {
    }

    /**
     * Maps {@code path} and checks it; tensors are views into the mapping.
     *
     * @throws InvalidFileException naming the file and the problem, for anything malformed
     */
    public static Safetensors open(Path path) throws IOException {
        return read(path, (channel, size, arena, source) -> channel.map(FileChannel.MapMode.READ_ONLY, 0, size, arena));
    }

    /**
     * Reads {@code path} into memory of its own (no mapping) and checks it: a file that shrinks
     * while it is read is reported as such, and nothing that happens to the file afterwards can
     * fault a later read. Costs a copy and the file's size in native memory until {@link #close()}.
     */
    public static Safetensors readCopy(Path path) throws IOException {
        return read(path, Safetensors::copy);
    }

    /** How a file's bytes become the segment it is parsed from: mapped, or copied into the arena. */
    private interface Bytes {
        MemorySegment of(FileChannel channel, long size, Arena arena, String source) throws IOException;
    }

    /** Opens {@code path}, refuses a file too short for the header length, and parses what {@code bytes} gives. */
    private static Safetensors read(Path path, Bytes bytes) throws IOException {
        String source = path.toString();
        Arena arena = Arena.ofShared();
        try (FileChannel channel = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = channel.size();
            if (size < 8) {
                throw new InvalidFileException(source,
                        "not a safetensors file: it is " + size + " bytes, too short for the 8-byte header length");
            }
            return parse(bytes.of(channel, size, arena, source), source, arena);
        } catch (NoSuchFileException e) {
            arena.close();
            throw new InvalidFileException(source, "no such file", e);
        } catch (AccessDeniedException e) {
            arena.close();
            throw new InvalidFileException(source, "permission denied", e);
        } catch (Throwable t) {
            arena.close();
            throw t;
        }
    }

    /** The whole file read into {@code arena}; a file that shrinks meanwhile is refused, naming it. */
    private static MemorySegment copy(FileChannel channel, long size, Arena arena, String source) throws IOException {
        MemorySegment copy = arena.allocate(size, 64);
        long position = 0;
        while (position < size) {
            ByteBuffer chunk = copy.asSlice(position, Math.min(1L << 30, size - position)).asByteBuffer();
            while (chunk.hasRemaining()) {
                if (channel.read(chunk, position + chunk.position()) < 0) {
                    throw new InvalidFileException(source, "changed while being read: it was " + size
                            + " bytes and ended after " + (position + chunk.position()));
                }
            }
            position += chunk.capacity();
        }
        return copy;
    }

    /**
     * Parses a whole safetensors file held in memory; the tensors are views into {@code file},
     * which the caller keeps alive. {@code source} names it in error messages.
     */
    public static Safetensors read(MemorySegment file, String source) throws InvalidFileException {
        return parse(file, source, null);
    }

    private static Safetensors parse(MemorySegment whole, String source, Arena arena)
            throws InvalidFileException {
        long size = whole.byteSize();
        if (size < 8) {
            throw new InvalidFileException(source,
                    "not a safetensors file: it is " + size + " bytes, too short for the 8-byte header length");
        }
        long headerLength = whole.get(LONG_LE, 0);
        // The length is an unsigned 64-bit number: a negative long is a huge length.
        // A header starts with '{' (the reference writer pads with spaces at the end, not the start).
        boolean jsonFollows = size > 8 && whole.get(ValueLayout.JAVA_BYTE, 8) == '{';
        String notSafetensors = jsonFollows ? "" : "not a safetensors file: ";
        if (headerLength < 0 || headerLength > MAX_HEADER_BYTES) {
            throw new InvalidFileException(source, notSafetensors + "header length " + Long.toUnsignedString(headerLength)
                    + " is over the 100 MB limit");
        }
        if (headerLength > size - 8) {
            throw new InvalidFileException(source, notSafetensors + "header length " + headerLength
                    + " is beyond the end of the file (" + size + " bytes)");
        }
        if (!jsonFollows && headerLength > 0) {
            throw new InvalidFileException(source, "not a safetensors file: no JSON header after the 8-byte length "
                    + "(byte 8 is not '{')");
        }
        byte[] json = whole.asSlice(8, headerLength).toArray(ValueLayout.JAVA_BYTE);
        long dataSize = size - 8 - headerLength;
        Header header = parseHeader(json, dataSize, source);
        MemorySegment data = whole.asSlice(8 + headerLength, dataSize);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Entry e : header.entries()) {
            DType dtype = DType.fromSafetensorsName(e.dtype());
            tensors.put(e.name(), Tensor.of(data.asSlice(e.begin(), e.end() - e.begin()), dtype, e.shape()));
        }
        return new Safetensors(source, arena, whole, tensors, header.metadata(), size);
    }

    /**
     * Parses and checks a header: JSON syntax, field types, dtypes, shapes and offsets against a
     * data section of {@code dataSize} bytes. Everything a file can get wrong is reported as an
     * {@link InvalidFileException}; nothing else may escape (the fuzz test holds it to that).
     */
    static Header parseHeader(byte[] json, long dataSize, String source) throws InvalidFileException {
        String text;
        try {
            // Decode strictly first: safetensors headers are UTF-8, and Jackson alone would
            // accept UTF-16 or UTF-32 by sniffing the first bytes.
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(json))
                    .toString();
        } catch (CharacterCodingException e) {
            throw new InvalidFileException(source, "header is not valid UTF-8");
        }
        if (text.isEmpty() || text.charAt(0) != '{') {
            throw new InvalidFileException(source, "invalid JSON header: it does not start with '{'");
        }
        List<Entry> entries = new ArrayList<>();
        Map<String, String> metadata = new LinkedHashMap<>();
        try (JsonParser p = JSON.createParser(text)) {
            p.nextToken();
            JsonToken token;
            while ((token = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                if (name.equals("__metadata__")) {
                    parseMetadata(p, metadata, source);
                } else {
                    entries.add(parseEntry(p, name, source));
                }
            }
            if (token != JsonToken.END_OBJECT) {
                throw new InvalidFileException(source, "invalid JSON header: unexpected " + token);
            }
            if (p.nextToken() != null) {
                throw new InvalidFileException(source, "invalid JSON header: data after the closing '}'");
            }
        } catch (InvalidFileException e) {
            throw e;
        } catch (JacksonException e) {
            throw new InvalidFileException(source, "invalid JSON header: " + describe(e));
        } catch (IOException e) {
            // Parsing a String does no I/O; keep the contract anyway.
            throw new InvalidFileException(source, "invalid JSON header: " + e.getMessage(), e);
        }
        checkEntries(entries, dataSize, source);
        return new Header(entries, metadata);
    }

    private static void parseMetadata(JsonParser p, Map<String, String> metadata, String source)
            throws IOException {
        if (p.nextToken() != JsonToken.START_OBJECT) {
            throw new InvalidFileException(source, "__metadata__ is not a JSON object");
        }
        JsonToken token;
        while ((token = p.nextToken()) == JsonToken.FIELD_NAME) {
            String key = p.currentName();
            if (p.nextToken() != JsonToken.VALUE_STRING) {
                throw new InvalidFileException(source, "__metadata__ value of '" + key + "' is not a string");
            }
            metadata.put(key, p.getText());
        }
        if (token != JsonToken.END_OBJECT) {
            throw new InvalidFileException(source, "invalid JSON header: unexpected " + token + " in __metadata__");
        }
    }

    private static Entry parseEntry(JsonParser p, String name, String source) throws IOException {
        String what = "tensor '" + name + "'";
        if (p.nextToken() != JsonToken.START_OBJECT) {
            throw new InvalidFileException(source, what + ": entry is not a JSON object");
        }
        String dtype = null;
        long[] shape = null;
        long[] offsets = null;
        JsonToken token;
        while ((token = p.nextToken()) == JsonToken.FIELD_NAME) {
            String field = p.currentName();
            JsonToken value = p.nextToken();
            switch (field) {
                case "dtype" -> {
                    if (value != JsonToken.VALUE_STRING) {
                        throw new InvalidFileException(source, what + ": dtype is not a string");
                    }
                    dtype = p.getText();
                }
                case "shape" -> shape = integers(p, value, what + ": shape", MAX_DIMS, source);
                case "data_offsets" -> offsets = integers(p, value, what + ": data_offsets", 2, source);
                // Unknown fields are ignored, as the reference reader does.
                default -> p.skipChildren();
            }
        }
        if (token != JsonToken.END_OBJECT) {
            throw new InvalidFileException(source, "invalid JSON header: unexpected " + token + " in " + what);
        }
        if (dtype == null || shape == null || offsets == null) {
            String missing = dtype == null ? "dtype" : shape == null ? "shape" : "data_offsets";
            throw new InvalidFileException(source, what + ": no " + missing);
        }
        if (offsets.length != 2) {
            throw new InvalidFileException(source, what + ": data_offsets has " + offsets.length
                    + " numbers, not 2 (begin, end)");
        }
        return new Entry(name, dtype, shape, offsets[0], offsets[1]);
    }

    /** A JSON array of non-negative 64-bit integers, at most {@code limit} long. */
    private static long[] integers(JsonParser p, JsonToken first, String what, int limit, String source)
            throws IOException {
        if (first != JsonToken.START_ARRAY) {
            throw new InvalidFileException(source, what + " is not an array");
        }
        long[] values = new long[4];
        int count = 0;
        JsonToken token;
        while ((token = p.nextToken()) != JsonToken.END_ARRAY) {
            if (token != JsonToken.VALUE_NUMBER_INT) {
                throw new InvalidFileException(source, what + " holds " + describe(token, p) + ", not an integer");
            }
            if (p.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
                throw new InvalidFileException(source, what + " holds " + p.getText() + ", too large");
            }
            long value = p.getLongValue();
            if (value < 0) {
                throw new InvalidFileException(source, what + " holds a negative number (" + value + ")");
            }
            if (count == limit) {
                throw new InvalidFileException(source, what + " has more than " + limit + " numbers");
            }
            if (count == values.length) {
                values = Arrays.copyOf(values, values.length * 2);
            }
            values[count++] = value;
        }
        return Arrays.copyOf(values, count);
    }

    private static String describe(JsonToken token, JsonParser p) throws IOException {
        return switch (token) {
            case VALUE_NUMBER_FLOAT -> p.getText();
            case VALUE_STRING -> "a string";
            case null -> "nothing";
            default -> token.asString() != null ? token.asString() : token.name();
        };
    }

    /** Jackson messages span lines and quote the input; keep the first line and the position. */
    private static String describe(JacksonException e) {
        String message = e.getOriginalMessage();
        if (message == null) {
            message = e.getClass().getSimpleName();
        }
        message = message.lines().findFirst().orElse(message);
        if (message.length() > 200) {
            message = message.substring(0, 200) + "...";
        }
        var location = e.getLocation();
        if (location != null && location.getCharOffset() >= 0) {
            message += " (at character " + location.getCharOffset() + ")";
        }
        return message;
    }

    /** Dtypes, shapes, sizes and offsets: the tensors must tile the data section exactly. */
    private static void checkEntries(List<Entry> entries, long dataSize, String source)
            throws InvalidFileException {
        for (Entry e : entries) {
            String what = "tensor '" + e.name() + "'";
            DType dtype = DType.fromSafetensorsName(e.dtype());
            if (dtype == null) {
                throw new InvalidFileException(source, what + ": unknown dtype '" + e.dtype()
                        + "' (fedlora reads F32, BF16 and F16)");
            }
            long bytes;
            try {
                long count = 1;
                for (long d : e.shape()) {
                    count = Math.multiplyExact(count, d);
                }
                bytes = Math.multiplyExact(count, (long) dtype.byteSize());
            } catch (ArithmeticException overflow) {
                throw new InvalidFileException(source, what + ": shape " + Arrays.toString(e.shape())
                        + " overflows a 64-bit size");
            }
            if (e.begin() > e.end()) {
                throw new InvalidFileException(source, what + ": data_offsets [" + e.begin() + ", " + e.end()
                        + "] end before they begin");
            }
            if (e.end() > dataSize) {
                throw new InvalidFileException(source, what + ": data_offsets [" + e.begin() + ", " + e.end()
                        + "] are outside the data section (" + dataSize + " bytes)");
            }
            if (e.end() - e.begin() != bytes) {
                throw new InvalidFileException(source, what + ": " + (e.end() - e.begin()) + " bytes of data, but "
                        + dtype + " " + Arrays.toString(e.shape()) + " needs " + bytes);
            }
        }
        List<Entry> byOffset = new ArrayList<>(entries);
        byOffset.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end));
        long covered = 0;
        Entry previous = null;
        for (Entry e : byOffset) {
            if (e.begin() < covered) {
                throw new InvalidFileException(source, "tensors '" + previous.name() + "' and '" + e.name()
                        + "' overlap (bytes " + e.begin() + " to " + covered + " of the data section)");
            }
            if (e.begin() > covered) {
                throw new InvalidFileException(source, "bytes " + covered + " to " + e.begin()
                        + " of the data section belong to no tensor");
            }
            covered = e.end();
            previous = e;
        }
        if (covered != dataSize) {
            throw new InvalidFileException(source, "the data section has " + (dataSize - covered)
                    + " bytes after the last tensor");
        }
    }

    /**
     * Writes a safetensors file: header padded with spaces so the data starts 8-byte aligned,
     * then the tensors' data in map order. The bytes go to a temporary file in the same
     * directory, which is synced and renamed over {@code file}; on any failure it is deleted,
     * so {@code file} is either the old one or the complete new one.
     */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata)
            throws IOException {
        byte[] header = header(tensors, metadata);
        Path target = file.toAbsolutePath();
        Path temp = target.resolveSibling("." + target.getFileName() + ".tmp-"
                + HexFormat.of().toHexDigits(ThreadLocalRandom.current().nextLong()));
        try {
            try (FileChannel channel = FileChannel.open(temp, StandardOpenOption.CREATE_NEW,
                    StandardOpenOption.WRITE);
                    Arena scratch = Arena.ofConfined()) {
                ByteBuffer prefix = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(header.length).flip();
                writeFully(channel, prefix);
                writeFully(channel, ByteBuffer.wrap(header));
                MemorySegment buffer = scratch.allocate(COPY_CHUNK, 64);
                for (Tensor t : tensors.values()) {
                    writeSegment(channel, t.data(), buffer);
                }
                channel.force(true);
            }
            Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (Throwable t) {
            try {
                Files.deleteIfExists(temp);
            } catch (IOException suppressed) {
                t.addSuppressed(suppressed);
            }
            throw t;
        }
    }

    /**
     * The bytes {@link #write} would put in a file, in one array: for data that travels (a partial
     * aggregate between Spark tasks) rather than lands on disk. {@link #read} parses them back.
     *
     * @throws IllegalArgumentException when the whole does not fit one Java array (2 GB)
     */
    public static byte[] toBytes(Map<String, Tensor> tensors, Map<String, String> metadata) {
        byte[] header;
        try {
            header = header(tensors, metadata);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write a safetensors header in memory", e);
        }
        long size = 8L + header.length;
        for (Tensor t : tensors.values()) {
            size += t.data().byteSize();
        }
        if (size > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("a safetensors image of " + size + " bytes does not fit one byte array");
        }
        byte[] out = new byte[(int) size];
        MemorySegment image = MemorySegment.ofArray(out);
        image.set(LONG_LE, 0, header.length);
        MemorySegment.copy(header, 0, image, ValueLayout.JAVA_BYTE, 8, header.length);
        long offset = 8L + header.length;
        for (Tensor t : tensors.values()) {
            long length = t.data().byteSize();
            MemorySegment.copy(t.data(), 0, image, offset, length);
            offset += length;
        }
        return out;
    }

    private static final int COPY_CHUNK = 4 << 20;

    private static void writeSegment(FileChannel channel, MemorySegment data, MemorySegment buffer)
            throws IOException {
        long size = data.byteSize();
        for (long offset = 0; offset < size; offset += COPY_CHUNK) {
            long length = Math.min(COPY_CHUNK, size - offset);
            MemorySegment slice = data.asSlice(offset, length);
            ByteBuffer bytes;
            if (slice.isNative()) {
                bytes = slice.asByteBuffer();
            } else {
                // Heap segments over float[] cannot be viewed as a ByteBuffer: stage them.
                MemorySegment.copy(slice, 0, buffer, 0, length);
                bytes = buffer.asSlice(0, length).asByteBuffer();
            }
            writeFully(channel, bytes);
        }
    }

    private static void writeFully(FileChannel channel, ByteBuffer bytes) throws IOException {
        while (bytes.hasRemaining()) {
            channel.write(bytes);
        }
    }

    /** The JSON header, padded with spaces to a multiple of 8 bytes. */
    static byte[] header(Map<String, Tensor> tensors, Map<String, String> metadata) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (JsonGenerator g = JSON.createGenerator(out)) {
            g.writeStartObject();
            if (metadata != null && !metadata.isEmpty()) {
                g.writeObjectFieldStart("__metadata__");
                for (var e : metadata.entrySet()) {
                    g.writeStringField(e.getKey(), e.getValue());
                }
                g.writeEndObject();
            }
            long offset = 0;
            for (var e : tensors.entrySet()) {
                if (e.getKey().equals("__metadata__")) {
                    throw new IllegalArgumentException("a tensor cannot be named __metadata__");
                }
                Tensor t = e.getValue();
                long end = offset + t.data().byteSize();
                g.writeObjectFieldStart(e.getKey());
                g.writeStringField("dtype", t.dtype().safetensorsName());
                g.writeArrayFieldStart("shape");
                for (long d : t.shape()) {
                    g.writeNumber(d);
                }
                g.writeEndArray();
                g.writeArrayFieldStart("data_offsets");
                g.writeNumber(offset);
                g.writeNumber(end);
                g.writeEndArray();
                g.writeEndObject();
                offset = end;
            }
            g.writeEndObject();
        }
        while (out.size() % 8 != 0) {
            out.write(' ');
        }
        return out.toByteArray();
    }

    /** The file (or description) this was read from. */
    public String source() {
        return source;
    }

    /** Tensors in header order; views into the mapping, valid until {@link #close()}. */
    public Map<String, Tensor> tensors() {
        return tensors;
    }

    /** The {@code __metadata__} map; empty if the file has none. */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** Size of the whole file in bytes. */
    public long byteSize() {
        return byteSize;
    }

    /** Brings a mapped file's pages into memory now; a no-op for data already in memory. */
    public void load() {
        if (mapping != null && mapping.isMapped()) {
            mapping.load();
        }
    }

    /** Unmaps the file (if this handle mapped it); its tensors must not be used afterwards. */
    @Override
    public void close() {
        if (arena != null && arena.scope().isAlive()) {
            arena.close();
        }
    }
}
