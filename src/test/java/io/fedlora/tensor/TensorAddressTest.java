package io.fedlora.tensor;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;

/** Tensor.ofAddress and copyToAddress, the Python bridge's way in and out of native memory. */
class TensorAddressTest {

    @Test
    void ofAddressReadsTheMemoryInPlace() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment memory = arena.allocate(6 * 4, 4);
            for (int i = 0; i < 6; i++) {
                DType.F32.set(memory, i, i + 0.5f);
            }
            Tensor t = Tensor.ofAddress(memory.address(), DType.F32, 2, 3);
            assertEquals(memory.address(), t.data().address());
            assertEquals(24, t.data().byteSize());
            assertEquals(2.5f, t.get(2));
            DType.F32.set(memory, 2, -7f); // not a copy: a later write shows through
            assertEquals(-7f, t.get(2));
        }
    }

    @Test
    void ofAddressSizesHalfPrecisionByTwoBytes() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment memory = arena.allocate(4 * 2, 2);
            DType.BF16.set(memory, 3, 1.5f);
            Tensor t = Tensor.ofAddress(memory.address(), DType.BF16, 4);
            assertEquals(8, t.data().byteSize());
            assertEquals(1.5f, t.get(3));
        }
    }

    @Test
    void aScopedViewCannotBeReadOnceItsArenaIsClosed() {
        try (Arena memoryOwner = Arena.ofConfined()) {
            MemorySegment memory = memoryOwner.allocate(4 * 4, 4);
            DType.F32.set(memory, 1, 3f);
            Arena call = Arena.ofShared();
            Tensor t = Tensor.ofAddress(memory.address(), DType.F32, call, 4);
            assertEquals(3f, t.get(1));
            call.close();
            assertThrows(IllegalStateException.class, () -> t.get(1));
        }
    }

    @Test
    void ofAddressRefusesNullAndNegativeShapes() {
        assertThrows(IllegalArgumentException.class, () -> Tensor.ofAddress(0, DType.F32, 2));
        assertThrows(IllegalArgumentException.class, () -> Tensor.ofAddress(64, DType.F32, -1));
    }

    @Test
    void copyToAddressWritesExactlyTheTensorsBytes() {
        Tensor t = Tensor.of(new float[] {1, 2, 3, 4}, 2, 2);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment memory = arena.allocate(5 * 4, 4);
            DType.F32.set(memory, 4, 99f);
            t.copyToAddress(memory.address(), 16);
            float[] back = new float[5];
            for (int i = 0; i < 5; i++) {
                back[i] = DType.F32.get(memory, i);
            }
            assertArrayEquals(new float[] {1, 2, 3, 4, 99}, back); // nothing past the end
            assertThrows(IllegalArgumentException.class, () -> t.copyToAddress(memory.address(), 20));
            assertThrows(IllegalArgumentException.class, () -> t.copyToAddress(0, 16));
        }
    }
}
