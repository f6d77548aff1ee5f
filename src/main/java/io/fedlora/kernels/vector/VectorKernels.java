package io.fedlora.kernels.vector;

import io.fedlora.DType;
import io.fedlora.kernels.CpuKernels;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * The CPU backend on the Java Vector API (jdk.incubator.vector): the same row primitives as
 * {@code ScalarKernels}, a vector of float32 lanes at a time, with an element-wise tail. Loaded by
 * class name only, so the rest of fedlora runs on a JVM without the incubator module.
 *
 * <p>Accumulation is {@code x.fma(w, acc)}, one rounding like {@code Math.fma(w, x, acc)}, so
 * accumulate, scale, pad and load agree with the scalar reference bit for bit; only the Gram dot
 * products sum in a different order.
 */
public final class VectorKernels extends CpuKernels {

    private static final VectorSpecies<Float> FLOATS = FloatVector.SPECIES_PREFERRED;
    private static final int LANES = FLOATS.length();
    /** 16-bit inputs: half as many bits as a float vector, so one load widens to one float vector. */
    private static final VectorSpecies<Short> HALFS =
            VectorSpecies.of(short.class, VectorShape.forBitSize(FLOATS.vectorBitSize() / 2));
    private static final VectorSpecies<Integer> INTS =
            VectorSpecies.of(int.class, VectorShape.forBitSize(FLOATS.vectorBitSize()));
    private static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;
    private static final ValueLayout.OfFloat FLOAT_LE = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(LE);
    /** 2^112 = 2^(127 - 15): rebiases a float16 exponent that was shifted into float32 position. */
    private static final float F16_REBIAS = 0x1p112f;

    public VectorKernels() {
        this(Runtime.getRuntime().availableProcessors());
    }

    public VectorKernels(int threads) {
        super(threads);
        if (LANES < 4) {
            // A 64-bit preferred shape means the JIT has no real vector unit to map to (or C2 is off).
            throw new UnsupportedOperationException("the Vector API reports only " + FLOATS.vectorBitSize()
                    + "-bit vectors here (C2 disabled or no SIMD); scalar loops are as fast");
        }
    }

    @Override
    public String name() {
        return "vector";
    }

    @Override
    public String description() {
        return "Java Vector API, " + FLOATS.vectorBitSize() + "-bit (" + LANES + " float lanes), FMA, "
                + threads() + " thread(s)";
    }

    /** One float vector from element {@code index} of src, converted from its dtype. */
    private static FloatVector loadVector(MemorySegment src, DType dtype, long index) {
        return switch (dtype) {
            case F32 -> FloatVector.fromMemorySegment(FLOATS, src, index * 4, LE);
            case BF16 -> ((IntVector) ShortVector.fromMemorySegment(HALFS, src, index * 2, LE)
                    .convertShape(VectorOperators.S2I, INTS, 0))
                    .lanewise(VectorOperators.LSHL, 16)
                    .reinterpretAsFloats();
            case F16 -> f16ToFloat((IntVector) ShortVector.fromMemorySegment(HALFS, src, index * 2, LE)
                    .convertShape(VectorOperators.S2I, INTS, 0));
        };
    }

    /**
     * float16 bits (sign-extended to int) to float32, exact for every finite value, subnormals
     * included: shifting exponent and mantissa 13 bits up and multiplying by 2^112 rebiases the
     * exponent; all-ones exponents (inf, NaN) get float32's all-ones exponent instead.
     */
    private static FloatVector f16ToFloat(IntVector half) {
        IntVector magnitude = half.and(0x7fff);
        IntVector sign = half.and(0x8000).lanewise(VectorOperators.LSHL, 16);
        IntVector shifted = magnitude.lanewise(VectorOperators.LSHL, 13);
        FloatVector finite = shifted.reinterpretAsFloats().mul(F16_REBIAS);
        FloatVector special = shifted.or(0x7f800000).reinterpretAsFloats();
        FloatVector value = finite.blend(special, magnitude.compare(VectorOperators.GE, 0x7c00).cast(FLOATS));
        return value.reinterpretAsInts().or(sign).reinterpretAsFloats();
    }

    /** The lanes of a row's last, partial vector: the first {@code n % LANES}. */
    private static VectorMask<Float> tail(int n) {
        return FLOATS.indexInRange(FLOATS.loopBound(n), n);
    }

    /** {@link #loadVector} for the lanes in {@code mask} only; the others read nothing and are zero. */
    private static FloatVector loadVector(MemorySegment src, DType dtype, long index, VectorMask<Float> mask) {
        return switch (dtype) {
            case F32 -> FloatVector.fromMemorySegment(FLOATS, src, index * 4, LE, mask);
            case BF16 -> ((IntVector) ShortVector.fromMemorySegment(HALFS, src, index * 2, LE, mask.cast(HALFS))
                    .convertShape(VectorOperators.S2I, INTS, 0))
                    .lanewise(VectorOperators.LSHL, 16)
                    .reinterpretAsFloats();
            case F16 -> f16ToFloat((IntVector) ShortVector.fromMemorySegment(HALFS, src, index * 2, LE, mask.cast(HALFS))
                    .convertShape(VectorOperators.S2I, INTS, 0));
        };
    }

    @Override
    protected void axpy(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w) {
        FloatVector weight = FloatVector.broadcast(FLOATS, w);
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = tail(n);
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            long x = srcOff + i * srcStride;
            // Whole vectors: one fused multiply-add per lane (F32 apart: the common case, no conversion).
            int t = 0;
            if (dtype == DType.F32) {
                for (; t < bound; t += LANES) {
                    FloatVector v = FloatVector.fromMemorySegment(FLOATS, src, (x + t) * 4, LE);
                    v.fma(weight, FloatVector.fromArray(FLOATS, acc, a + t)).intoArray(acc, a + t);
                }
            } else {
                for (; t < bound; t += LANES) {
                    loadVector(src, dtype, x + t).fma(weight, FloatVector.fromArray(FLOATS, acc, a + t))
                            .intoArray(acc, a + t);
                }
            }
            // The row's tail, masked: B factors' rows (rank 5, 20, ...) are mostly tail.
            if (t < n) {
                loadVector(src, dtype, x + t, tail).fma(weight, FloatVector.fromArray(FLOATS, acc, a + t, tail))
                        .intoArray(acc, a + t, tail);
            }
        }
    }

    @Override
    protected boolean scale(float[] out, float[] in, int off, int stride, int rows, int n,
            float[] rowScale, int rowOff, float[] colScale, int colOff) {
        // x - x is 0 for finite x and NaN for NaN or inf: summing it flags any non-finite result.
        FloatVector check = FloatVector.zero(FLOATS);
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = tail(n);
        for (int i = 0; i < rows; i++) {
            FloatVector row = FloatVector.broadcast(FLOATS, rowScale == null ? 1f : rowScale[rowOff + i]);
            int o = off + i * stride;
            int t = 0;
            for (; t < bound; t += LANES) {
                FloatVector factor = colScale == null ? row : row.mul(FloatVector.fromArray(FLOATS, colScale, colOff + t));
                FloatVector v = FloatVector.fromArray(FLOATS, in, o + t).mul(factor);
                v.intoArray(out, o + t);
                check = check.add(v.sub(v));
            }
            if (t < n) {
                FloatVector factor = colScale == null ? row : row.mul(FloatVector.fromArray(FLOATS, colScale, colOff + t, tail));
                FloatVector v = FloatVector.fromArray(FLOATS, in, o + t, tail).mul(factor);
                v.intoArray(out, o + t, tail);
                check = check.add(v.sub(v)); // masked-off lanes are 0 * factor: finite
            }
        }
        return check.reduceLanes(VectorOperators.ADD) == 0f;
    }

    @Override
    protected boolean finite(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        FloatVector check = FloatVector.zero(FLOATS);
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = tail(n);
        for (int i = 0; i < rows; i++) {
            long x = srcOff + i * srcStride;
            int t = 0;
            for (; t < bound; t += LANES) {
                FloatVector v = loadVector(src, dtype, x + t);
                check = check.add(v.sub(v));
            }
            if (t < n) {
                FloatVector v = loadVector(src, dtype, x + t, tail);
                check = check.add(v.sub(v));
            }
        }
        return check.reduceLanes(VectorOperators.ADD) == 0f;
    }

    @Override
    protected void load(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n) {
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = tail(n);
        for (int i = 0; i < rows; i++) {
            int o = outOff + i * outStride;
            long x = srcOff + i * srcStride;
            if (dtype == DType.F32) {
                // A bulk copy beats an explicit vector loop for plain float data.
                MemorySegment.copy(src, FLOAT_LE, x * 4, out, o, n);
                continue;
            }
            int t = 0;
            for (; t < bound; t += LANES) {
                loadVector(src, dtype, x + t).intoArray(out, o + t);
            }
            if (t < n) {
                loadVector(src, dtype, x + t, tail).intoArray(out, o + t, tail);
            }
        }
    }

    @Override
    protected double dot(float[] x, int xOff, float[] y, int yOff, int n) {
        // Float lanes, summed in double at the end: n / LANES terms per lane keeps the error near 1e-7.
        FloatVector sum = FloatVector.zero(FLOATS);
        int t = 0;
        int bound = FLOATS.loopBound(n);
        for (; t < bound; t += LANES) {
            sum = FloatVector.fromArray(FLOATS, x, xOff + t).fma(FloatVector.fromArray(FLOATS, y, yOff + t), sum);
        }
        double s = 0;
        for (int lane = 0; lane < LANES; lane++) {
            s += sum.lane(lane);
        }
        for (; t < n; t++) {
            s += (double) x[xOff + t] * y[yOff + t];
        }
        return s;
    }
}
