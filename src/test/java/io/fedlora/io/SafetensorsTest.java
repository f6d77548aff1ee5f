package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Byte-exact round trips against fixtures assembled here from the format description (8-byte
 * little-endian header length, JSON header padded with spaces to 8 bytes, little-endian data),
 * and every header check of DESIGN §5 on the parser itself (the CLI test runs them end to end).
 */
class SafetensorsTest {
    static byte[] file(String headerJson, byte[] data) {
        return SafetensorsFixtures.file(headerJson, data);
    }

    static byte[] le16(int... values) {
        return SafetensorsFixtures.le16(values);
    }

    static byte[] le32(float... values) {
        return SafetensorsFixtures.le32(values);
    }


    @TempDir
    Path dir;

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

    /** The in-memory image is the file, byte for byte, for every dtype, and reads back in place. */
    @Test
    void inMemoryImageEqualsTheFileAndReadsBack() throws Exception {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("m.lora_A.weight", Tensor.of(new float[] {1f, -2.5f, 0.1f, -0.0f, 7f, Float.MIN_VALUE}, 2, 3));
        tensors.put("m.lora_B.weight", Tensor.ofBytes(le16(0x3F80, 0xC000, 0x0001), DType.BF16, 3, 1));
        tensors.put("head", Tensor.ofBytes(le16(0x3C00), DType.F16, 1));
        Path path = dir.resolve("image.safetensors");
        Safetensors.write(path, tensors, Map.of("format", "pt", "k", "v"));

        byte[] image = Safetensors.toBytes(tensors, Map.of("format", "pt", "k", "v"));
        assertArrayEquals(Files.readAllBytes(path), image);

        Safetensors read = Safetensors.read(MemorySegment.ofArray(image), "image");
        assertEquals(List.copyOf(tensors.keySet()), List.copyOf(read.tensors().keySet()));
        for (var e : tensors.entrySet()) {
            Tensor t = read.tensors().get(e.getKey());
            assertEquals(e.getValue().dtype(), t.dtype());
            assertArrayEquals(e.getValue().shape(), t.shape());
            assertEquals(-1, e.getValue().data().mismatch(t.data()), e.getKey());
        }
        assertEquals(Map.of("format", "pt", "k", "v"), read.metadata());
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

    @ParameterizedTest(name = "{0}")
    @MethodSource("io.fedlora.io.SafetensorsFixtures#malformed")
    void malformedFilesAreRejectedWithTheProblem(String name, byte[] bytes, String problem) throws Exception {
        byte[] content = bytes;
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

    @Test
    void missingFileIsNamed() {
        Path path = dir.resolve("nope.safetensors");
        InvalidFileException e = assertThrows(InvalidFileException.class, () -> Safetensors.open(path));
        assertEquals(path + ": no such file", e.getMessage());
    }
}
