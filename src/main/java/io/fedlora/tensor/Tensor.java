package io.fedlora.tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Objects;

/**
 * An immutable view of a dense row-major tensor: a dtype, a shape and little-endian data in a
 * {@link MemorySegment}. The data may live on the heap ({@code float[]} or raw bytes) or
 * off-heap (a memory-mapped safetensors file); fedlora reads it in place and never copies a
 * client's tensor just to look at it.
 */
public final class Tensor {
    private final DType dtype;
    private final long[] shape;
    private final MemorySegment data;

    private Tensor(DType dtype, long[] shape, MemorySegment data) {
        this.dtype = Objects.requireNonNull(dtype, "dtype");
        this.shape = shape.clone();
        this.data = Objects.requireNonNull(data, "data");
        long count = 1;
        for (long d : this.shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            count = Math.multiplyExact(count, d);
        }
        long bytes = Math.multiplyExact(count, (long) dtype.byteSize());
        if (data.byteSize() != bytes) {
            throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " of " + dtype + " needs "
                    + bytes + " bytes, data has " + data.byteSize());
        }
    }

    /** A float32 tensor over {@code values} (not copied: later changes to the array show through). */
    public static Tensor of(float[] values, long... shape) {
        return new Tensor(DType.F32, shape, MemorySegment.ofArray(values));
    }

    /** A tensor over little-endian data of the given type, on or off heap (not copied). */
    public static Tensor of(MemorySegment data, DType dtype, long... shape) {
        return new Tensor(dtype, shape, data);
    }

    /**
     * A tensor over native memory at {@code address} that someone else owns (a numpy array or a
     * torch tensor handed over by the Python bridge), read in place. The segment has the global
     * scope: the caller keeps the memory alive and unchanged in shape for as long as the tensor is
     * used. Needs native access ({@code --enable-native-access}).
     */
    public static Tensor ofAddress(long address, DType dtype, long... shape) {
        return ofAddress(address, dtype, Arena.global(), shape);
    }

    /**
     * As {@link #ofAddress(long, DType, long...)}, but the view lives only as long as {@code scope}:
     * once the caller closes it (the Python bridge closes a shared arena when its call returns),
     * any later read of this tensor throws {@code IllegalStateException} instead of reading memory
     * the caller may have freed.
     */
    public static Tensor ofAddress(long address, DType dtype, Arena scope, long... shape) {
        Objects.requireNonNull(scope, "scope");
        if (address == 0) {
            throw new IllegalArgumentException("null address for a " + dtype + Arrays.toString(shape) + " tensor");
        }
        long count = 1;
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            count = Math.multiplyExact(count, d);
        }
        long bytes = Math.multiplyExact(count, (long) dtype.byteSize());
        return new Tensor(dtype, shape, MemorySegment.ofAddress(address).reinterpret(bytes, scope, null));
    }

    /** A tensor over raw little-endian bytes, e.g. BF16 or F16 as a framework serialised them. */
    public static Tensor ofBytes(byte[] raw, DType dtype, long... shape) {
        return new Tensor(dtype, shape, MemorySegment.ofArray(raw));
    }

    /** A float32 copy of {@code values} converted to {@code dtype} (rounded to nearest even). */
    public static Tensor convert(float[] values, DType dtype, long... shape) {
        if (dtype == DType.F32) {
            return of(values.clone(), shape);
        }
        MemorySegment out = MemorySegment.ofArray(new byte[Math.multiplyExact(values.length, dtype.byteSize())]);
        for (int i = 0; i < values.length; i++) {
            dtype.set(out, i, values[i]);
        }
        return new Tensor(dtype, shape, out);
    }

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    public long dim(int axis) {
        return shape[axis];
    }

    /** Number of elements. */
    public long elementCount() {
        long count = 1;
        for (long d : shape) {
            count *= d;
        }
        return count;
    }

    /** The little-endian data; its size is exactly {@code elementCount() * dtype().byteSize()}. */
    public MemorySegment data() {
        return data;
    }

    /** Element {@code index} of the flattened tensor, converted to float32. */
    public float get(long index) {
        return dtype.get(data, index);
    }

    /** A float32 copy of the data. */
    public float[] toFloatArray() {
        long count = elementCount();
        if (count > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor of " + count + " elements does not fit a float[]");
        }
        float[] out = new float[(int) count];
        if (dtype == DType.F32) {
            MemorySegment.copy(data, DType.FLOAT_LE, 0, out, 0, out.length);
        } else {
            for (int i = 0; i < out.length; i++) {
                out[i] = dtype.get(data, i);
            }
        }
        return out;
    }

    /** This tensor converted to {@code target} (a new heap tensor; this one if already that type). */
    public Tensor to(DType target) {
        return target == dtype ? this : convert(toFloatArray(), target, shape);
    }

    /** A copy whose data lives in {@code arena} (off-heap), e.g. to keep it past a mapped file. */
    public Tensor copyTo(Arena arena) {
        MemorySegment copy = arena.allocate(data.byteSize(), 8);
        copy.copyFrom(data);
        return new Tensor(dtype, shape, copy);
    }

    /**
     * Copies this tensor's little-endian data, as it is (no conversion), into native memory at
     * {@code address} that the caller owns, e.g. a numpy array the Python bridge allocated;
     * {@code byteSize} is the size of that memory and must equal {@code data().byteSize()}.
     */
    public void copyToAddress(long address, long byteSize) {
        if (address == 0) {
            throw new IllegalArgumentException("null destination address for " + this);
        }
        if (byteSize != data.byteSize()) {
            throw new IllegalArgumentException(this + " has " + data.byteSize() + " bytes, the destination " + byteSize);
        }
        MemorySegment.ofAddress(address).reinterpret(byteSize).copyFrom(data);
    }

    @Override
    public String toString() {
        return dtype + Arrays.toString(shape);
    }
}
