package io.fedlora.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import com.code_intelligence.jazzer.junit.DictionaryEntries;
import com.code_intelligence.jazzer.junit.FuzzTest;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Map;
import org.junit.jupiter.api.Timeout;

/**
 * Coverage-guided fuzzing of the safetensors reader (issue 4). Whatever the bytes, the reader
 * either returns tensors that lie inside the data section or throws {@link InvalidFileException};
 * any other exception, a hang or running out of memory is a finding.
 *
 * <p>Without {@code JAZZER_FUZZ=1} this replays the corpus in
 * {@code src/test/resources/io/fedlora/io/SafetensorsFuzzTestInputs/} as a regression test;
 * the build's "fuzz" surefire execution sets it and fuzzes for the duration below.
 */
class SafetensorsFuzzTest {

    // Jazzer turns a JUnit @Timeout into libFuzzer's per-input -timeout, so an input that runs
    // that long is reported as a hang. JUnit applies the same limit to the whole fuzzing
    // invocation (30 s of fuzzing plus instrumenting), hence a generous 120 s rather than a few.
    // libFuzzer runs with -rss_limit_mb=0: running out of memory shows up as the JVM's
    // OutOfMemoryError, which fails the test like any other throw.
    @Timeout(120)
    @FuzzTest(maxDuration = "30s")
    @DictionaryEntries({"{", "}", "[", "]", ":", ",", "\"dtype\"", "\"shape\"", "\"data_offsets\"",
        "\"__metadata__\"", "\"F32\"", "\"BF16\"", "\"F16\"", "\"I64\"", "18446744073709551615", "-1", "1e3"})
    void readerAcceptsOrRejectsCleanly(byte[] input) throws IOException {
        // The bytes as a whole file: exercises the length prefix and the header bounds.
        check(input);
        // The bytes as a header after a correct length prefix, so the fuzzer spends its time
        // in the JSON and the offsets rather than in guessing a length that fits.
        ByteBuffer framed = ByteBuffer.allocate(8 + input.length).order(ByteOrder.LITTLE_ENDIAN);
        int split = input.length;
        for (int i = 0; i < input.length; i++) {
            if (input[i] == 0) {
                split = i;
                break;
            }
        }
        framed.putLong(split).put(input);
        check(framed.array());
    }

    private static void check(byte[] file) throws IOException {
        Safetensors read;
        try {
            read = Safetensors.read(MemorySegment.ofArray(file), "fuzz");
        } catch (InvalidFileException expected) {
            return;
        }
        // Accepted: every tensor is a view of exactly its bytes, and writing the header back
        // out and reading it again gives the same tensors.
        long total = 0;
        for (Tensor t : read.tensors().values()) {
            assertEquals(t.elementCount() * t.dtype().byteSize(), t.data().byteSize());
            total += t.data().byteSize();
        }
        byte[] header = Safetensors.header(read.tensors(), read.metadata());
        ByteBuffer again = ByteBuffer.allocate(Math.toIntExact(8 + header.length + total)).order(ByteOrder.LITTLE_ENDIAN);
        again.putLong(header.length).put(header);
        for (Tensor t : read.tensors().values()) {
            again.put(t.data().asByteBuffer());
        }
        Safetensors reread = Safetensors.read(MemorySegment.ofArray(again.array()), "fuzz (rewritten)");
        assertEquals(read.metadata(), reread.metadata());
        assertEquals(read.tensors().keySet(), reread.tensors().keySet());
        for (Map.Entry<String, Tensor> e : read.tensors().entrySet()) {
            Tensor other = reread.tensors().get(e.getKey());
            assertEquals(e.getValue().dtype(), other.dtype());
            assertArrayEquals(e.getValue().shape(), other.shape());
        }
    }
}
