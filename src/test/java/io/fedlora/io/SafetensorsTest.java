package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.DType;
import io.fedlora.Tensor;
import java.io.ByteArrayOutputStream;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Byte-exact round trips against fixtures assembled here from the format description (8-byte
 * little-endian header length, JSON header padded with spaces to 8 bytes, little-endian data),
 * and every header check of DESIGN §5 on the parser itself (the CLI test runs them end to end).
 */
class SafetensorsTest {

    @TempDir
    Path dir;

    /** A file as the format describes it: length, header (space-padded to 8), data. */
    static byte[] file(String headerJson, byte[] data) {
        StringBuilder header = new StringBuilder(headerJson);
        while ((8 + header.length()) % 8 != 0) {
            header.append(' ');
        }
        byte[] json = header.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate(8 + json.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(json.length).put(json).put(data);
        return out.array();
    }

    static byte[] le16(int... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : values) {
            b.putShort((short) v);
        }
        return b.array();
    }

    static byte[] le32(float... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) {
            b.putFloat(v);
        }
        return b.array();
    }

    @Test
    void f32RoundTripIsByteExact() throws Exception {
        float[] values = {1.0f, -2.5f, 0.1f, Float.MIN_VALUE, -0.0f, 3.4028235e38f};
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("m.lora_A.weight", Tensor.of(values.clone(), 2, 3));
        byte[] expected = file("{\"__metadata__\":{\"format\":\"pt\"},\"m.lora_A.weight\":"
                + "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", le32(values));

        Path path = dir.resolve("f32.safetensors");
        Safetensors.write(path, tensors, Map.of("format", "pt"));
        assertArrayEquals(expected, Files.readAllBytes(path));

        try (Safetensors read = Safetensors.open(path)) {
            Tensor t = read.tensors().get("m.lora_A.weight");
            assertEquals(DType.F32, t.dtype());
            assertArrayEquals(new long[] {2, 3}, t.shape());
            assertArrayEquals(values, t.toFloatArray());
            assertTrue(t.data().isNative(), "tensors are views into the mapping, not heap copies");
            assertEquals(Map.of("format", "pt"), read.metadata());
        }
    }

    /**
     * bfloat16 is the top 16 bits of a float32, rounded to nearest, ties to even. Each value below
     * is chosen for one rounding case; the expected bits are worked out by hand.
     */
    @Test
    void bf16RoundsToNearestEvenAndRoundTrips() throws Exception {
        float[] values = {
            1.0f,                                  // exact: 0x3F80
            Float.intBitsToFloat(0x3F808000),      // halfway, even below: stays 0x3F80
            Float.intBitsToFloat(0x3F818000),      // halfway, odd below: up to 0x3F82
            Float.intBitsToFloat(0x3F808001),      // just above halfway: up to 0x3F81
            Float.intBitsToFloat(0xBF80FFFF),      // -1.0078..: rounds away to 0xBF81
            Float.intBitsToFloat(0x7F7FFFFF),      // max float: overflows to +inf 0x7F80
        };
        byte[] expectedData = le16(0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF81, 0x7F80);
        Map<String, Tensor> tensors = Map.of("x", Tensor.convert(values, DType.BF16, 6));
        byte[] expected = file("{\"x\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[0,12]}}", expectedData);

        Path path = dir.resolve("bf16.safetensors");
        Safetensors.write(path, tensors, Map.of());
        assertArrayEquals(expected, Files.readAllBytes(path));
        try (Safetensors read = Safetensors.open(path)) {
            Tensor t = read.tensors().get("x");
            assertEquals(DType.BF16, t.dtype());
            float[] back = t.toFloatArray();
            assertEquals(1.0f, back[1]);
            assertEquals(Float.intBitsToFloat(0x3F820000), back[2]);
            assertEquals(Float.POSITIVE_INFINITY, back[5]);
            // Writing what was read gives the same bytes again.
            Path again = dir.resolve("bf16-again.safetensors");
            Safetensors.write(again, read.tensors(), Map.of());
            assertArrayEquals(expected, Files.readAllBytes(again));
        }
    }

    @Test
    void f16RoundsToNearestEvenAndRoundTrips() throws Exception {
        float[] values = {
            1.0f,                  // 0x3C00
            -2.0f,                 // 0xC000
            65504f,                // largest half: 0x7BFF
            1.0f + 0x1p-11f,       // halfway between 1 and 1+2^-10, even below: 0x3C00
            1.0f + 3 * 0x1p-11f,   // halfway, odd below: up to 0x3C02
            0x1p-24f,              // smallest subnormal half: 0x0001
        };
        byte[] expectedData = le16(0x3C00, 0xC000, 0x7BFF, 0x3C00, 0x3C02, 0x0001);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("a", Tensor.convert(values, DType.F16, 2, 3));
        tensors.put("empty", Tensor.of(new float[0], 0, 4));
        byte[] expected = file("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                + "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[12,12]}}", expectedData);

        Path path = dir.resolve("f16.safetensors");
        Safetensors.write(path, tensors, null);
        assertArrayEquals(expected, Files.readAllBytes(path));
        try (Safetensors read = Safetensors.open(path)) {
            assertEquals(List.of("a", "empty"), List.copyOf(read.tensors().keySet()));
            assertArrayEquals(new float[] {1, -2, 65504, 1, 1 + 2 * 0x1p-10f, 0x1p-24f},
                    read.tensors().get("a").toFloatArray());
            assertEquals(0, read.tensors().get("empty").elementCount());
        }
    }

    @Test
    void headerIsPaddedToEightBytesAndDataIsAligned() throws Exception {
        for (int nameLength = 1; nameLength <= 9; nameLength++) {
            Path path = dir.resolve("pad" + nameLength + ".safetensors");
            Safetensors.write(path, Map.of("n".repeat(nameLength), Tensor.of(new float[] {1}, 1)), Map.of());
            byte[] bytes = Files.readAllBytes(path);
            long headerLength = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getLong();
            assertEquals(0, headerLength % 8, "header length " + headerLength);
            assertEquals(bytes.length, 8 + headerLength + 4);
        }
    }

    @Test
    void failedWriteLeavesNoFileBehind() throws Exception {
        Path path = dir.resolve("bad.safetensors");
        assertThrows(IllegalArgumentException.class, () -> Safetensors.write(path,
                Map.of("__metadata__", Tensor.of(new float[] {1}, 1)), Map.of()));
        try (Stream<Path> files = Files.list(dir)) {
            assertEquals(List.of(), files.toList());
        }
    }

    @Test
    void writeReplacesAnExistingFile() throws Exception {
        Path path = dir.resolve("w.safetensors");
        Files.writeString(path, "old");
        Safetensors.write(path, Map.of("t", Tensor.of(new float[] {7}, 1)), Map.of());
        try (Safetensors read = Safetensors.open(path)) {
            assertEquals(7f, read.tensors().get("t").get(0));
        }
        try (Stream<Path> files = Files.list(dir)) {
            assertEquals(1, files.count(), "no temporary file left");
        }
    }

    static Stream<Arguments> malformed() {
        byte[] eight = new byte[8];
        return Stream.of(
                Arguments.of("short file", new byte[5], "too short"),
                Arguments.of("header beyond file", lengthThen(500, "{}"), "beyond the end of the file"),
                Arguments.of("header over 100 MB", lengthThen(100_000_001L, "{}"), "over the 100 MB limit"),
                Arguments.of("unsigned huge header", lengthThen(-1L, "{}"), "over the 100 MB limit"),
                Arguments.of("invalid JSON", file("{\"a\":{\"dtype\":\"F32\"", new byte[0]), "invalid JSON"),
                Arguments.of("not an object", file("[1,2]", new byte[0]), "invalid JSON"),
                Arguments.of("trailing JSON", file("{} {}", new byte[0]), "invalid JSON"),
                Arguments.of("not UTF-8", file("{\"\u00ff\":1}", new byte[0]).clone(), "not valid UTF-8"),
                Arguments.of("outside data", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                        new byte[4]), "outside the data section"),
                Arguments.of("overlap", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", new byte[12]), "overlap"),
                Arguments.of("size mismatch", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
                        new byte[8]), "needs 12"),
                Arguments.of("unknown dtype", file("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                        new byte[8]), "unknown dtype 'Q4'"),
                Arguments.of("unsupported dtype", file("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
                        eight), "unknown dtype 'I64'"),
                Arguments.of("shape overflow", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                        + "\"data_offsets\":[0,8]}}", eight), "overflows"),
                Arguments.of("negative dim", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}",
                        eight), "negative"),
                Arguments.of("huge dim", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999999],"
                        + "\"data_offsets\":[0,8]}}", eight), "too large"),
                Arguments.of("float dim", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}",
                        eight), "not an integer"),
                Arguments.of("gap", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", eight),
                        "belong to no tensor"),
                Arguments.of("trailing bytes", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        eight), "after the last tensor"),
                Arguments.of("reversed offsets", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}",
                        eight), "end before they begin"),
                Arguments.of("missing offsets", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", eight), "no data_offsets"),
                Arguments.of("three offsets", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}",
                        eight), "more than 2"),
                Arguments.of("duplicate name", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        + "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", eight), "Duplicate"),
                Arguments.of("metadata not strings", file("{\"__metadata__\":{\"step\":3}}", new byte[0]),
                        "not a string"));
    }

    static byte[] lengthThen(long length, String json) {
        byte[] text = json.getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate(8 + text.length).order(ByteOrder.LITTLE_ENDIAN);
        return out.putLong(length).put(text).array();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("malformed")
    void malformedFilesAreRejectedWithTheProblem(String name, byte[] bytes, String problem) throws Exception {
        byte[] content = name.equals("not UTF-8") ? latin1Header(bytes) : bytes;
        Path path = dir.resolve("bad.safetensors");
        Files.write(path, content);
        InvalidFileException e = assertThrows(InvalidFileException.class, () -> Safetensors.open(path));
        assertTrue(e.getMessage().startsWith(path + ": "), e.getMessage());
        assertTrue(e.getMessage().contains(problem), "'" + e.getMessage() + "' should say '" + problem + "'");
        assertEquals(1, e.getMessage().lines().count(), "one line");
        // The same bytes from memory give the same verdict.
        InvalidFileException fromMemory = assertThrows(InvalidFileException.class,
                () -> Safetensors.read(MemorySegment.ofArray(content), "mem"));
        assertEquals(e.problem(), fromMemory.problem());
    }

    /** Re-encodes the header of a UTF-8 fixture as Latin-1, which is not valid UTF-8 for \u00ff. */
    private static byte[] latin1Header(byte[] utf8File) {
        ByteBuffer in = ByteBuffer.wrap(utf8File).order(ByteOrder.LITTLE_ENDIAN);
        int n = (int) in.getLong();
        String header = new String(utf8File, 8, n, StandardCharsets.UTF_8);
        byte[] latin1 = header.getBytes(StandardCharsets.ISO_8859_1);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.writeBytes(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(latin1.length).array());
        out.writeBytes(latin1);
        return out.toByteArray();
    }

    @Test
    void missingFileIsNamed() {
        Path path = dir.resolve("nope.safetensors");
        InvalidFileException e = assertThrows(InvalidFileException.class, () -> Safetensors.open(path));
        assertEquals(path + ": no such file", e.getMessage());
    }
}
