package io.fedlora.tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Element types of adapter tensors, as safetensors names them. Data is little-endian, as in
 * safetensors files, and read unaligned so that a tensor can sit anywhere in a mapped file.
 */
public enum DType {
    F32(4),
    BF16(2),
    F16(2);

    static final ValueLayout.OfFloat FLOAT_LE =
            ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort SHORT_LE =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final int byteSize;

    DType(int byteSize) {
        this.byteSize = byteSize;
    }

    /** Bytes per element. */
    public int byteSize() {
        return byteSize;
    }

    /** The name safetensors uses in its header ("F32", "BF16", "F16"). */
    public String safetensorsName() {
        return name();
    }

    /** Parses a safetensors dtype name; null if fedlora does not read that dtype. */
    public static DType fromSafetensorsName(String name) {
        return switch (name) {
            case "F32" -> F32;
            case "BF16" -> BF16;
            case "F16" -> F16;
            default -> null;
        };
    }

    /** Reads element {@code index} (not byte offset) of a little-endian array of this type. */
    public float get(MemorySegment data, long index) {
        return switch (this) {
            case F32 -> data.get(FLOAT_LE, index * 4);
            case BF16 -> bf16ToFloat(data.get(SHORT_LE, index * 2));
            case F16 -> Float.float16ToFloat(data.get(SHORT_LE, index * 2));
        };
    }

    /** Writes element {@code index}, rounding to nearest even where the type is narrower. */
    public void set(MemorySegment data, long index, float value) {
        switch (this) {
            case F32 -> data.set(FLOAT_LE, index * 4, value);
            case BF16 -> data.set(SHORT_LE, index * 2, floatToBf16(value));
            case F16 -> data.set(SHORT_LE, index * 2, Float.floatToFloat16(value));
        }
    }

    /** bfloat16 is the top half of a float32. */
    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    /** float32 to bfloat16, round to nearest, ties to even; NaN stays a (quiet) NaN. */
    public static short floatToBf16(float value) {
        int bits = Float.floatToRawIntBits(value);
        if (Float.isNaN(value)) {
            return (short) ((bits >>> 16) | 0x0040);
        }
        int lsb = (bits >>> 16) & 1;
        return (short) ((bits + 0x7fff + lsb) >>> 16);
    }
}
