package io.fedlora.io;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.stream.Stream;
import org.junit.jupiter.params.provider.Arguments;

/**
 * safetensors files assembled byte by byte from the format description, good and bad; shared by
 * the reader's tests and the command line's.
 */
public final class SafetensorsFixtures {
    private SafetensorsFixtures() {
    }

    /** A file as the format describes it: length, header (space-padded to 8), data. */
    public static byte[] file(String headerJson, byte[] data) {
        StringBuilder header = new StringBuilder(headerJson);
        while ((8 + header.length()) % 8 != 0) {
            header.append(' ');
        }
        byte[] json = header.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate(8 + json.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(json.length).put(json).put(data);
        return out.array();
    }

    public static byte[] le16(int... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : values) {
            b.putShort((short) v);
        }
        return b.array();
    }

    public static byte[] le32(float... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) {
            b.putFloat(v);
        }
        return b.array();
    }

    /** (name, file bytes, what the error must say) for every malformed-file check of DESIGN §5. */
    public static Stream<Arguments> malformed() {
        byte[] eight = new byte[8];
        return Stream.of(
                Arguments.of("short file", new byte[5], "not a safetensors file: it is 5 bytes, too short"),
                Arguments.of("header beyond file", lengthThen(500, "{}"), "beyond the end of the file"),
                Arguments.of("header over 100 MB", lengthThen(100_000_001L, "{}"), "over the 100 MB limit"),
                Arguments.of("unsigned huge header", lengthThen(-1L, "{}"), "over the 100 MB limit"),
                Arguments.of("invalid JSON", file("{\"a\":{\"dtype\":\"F32\"", new byte[0]), "invalid JSON"),
                Arguments.of("not an object", file("[1,2]", new byte[0]), "not a safetensors file"),
                // Issue 9: a text file used to give "header length 7021991845529153390 is over the 100 MB limit".
                Arguments.of("text file", "not a safetensors file, just some words".getBytes(java.nio.charset.StandardCharsets.US_ASCII),
                        "not a safetensors file: header length"),
                Arguments.of("small length, no JSON", lengthThen(4, "abcd"), "not a safetensors file: no JSON header"),
                Arguments.of("trailing JSON", file("{} {}", new byte[0]), "invalid JSON"),
                Arguments.of("not UTF-8", latin1Header(file("{\"\u00ff\":1}", new byte[0])), "not valid UTF-8"),
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

    public static byte[] lengthThen(long length, String json) {
        byte[] text = json.getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate(8 + text.length).order(ByteOrder.LITTLE_ENDIAN);
        return out.putLong(length).put(text).array();
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

}
