package io.fedlora.kernels.cpu;

import io.fedlora.tensor.DType;
import io.fedlora.kernels.cpu.CpuKernels;
import io.fedlora.kernels.cpu.ScalarKernels;
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
    private static final ValueLayout.OfShort SHORT_LE = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(LE);
    private static final short BF16_EXPONENT = 0x7f80;
    private static final short F16_EXPONENT = 0x7c00;
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

    // ---- the cold start -----------------------------------------------------------------------
    // Vector API code is only fast once C2 has compiled it: before that (interpreter, C1) every
    // vector is a heap object. Measured here: a first 60 MB round took 1.4 s on vector loops and
    // 0.1 s on scalar ones, and a one-shot 600 MB CLI run 2.2-2.3 s against 1.6-1.8 s. So for
    // each primitive's first COLD_CALLS calls the scalar reference loops do the work, and one call
    // in PRIME_EVERY also runs the vector loops on its first rows or vector-widths, so that C2 has
    // compiled them by the hand-over (the CLI run: 1.7-1.9 s). Both give the same bits (fma per
    // element, one rounding), so callers cannot tell. A long-running server hands over within its
    // first seconds of work. The tests turn this off to hold the vector loops alone to the contract.

    /** System property: "false" makes every call use the vector loops from the start. */
    public static final String WARM_UP_PROPERTY = "fedlora.vector.warmup";
    private static final boolean WARM_UP = Boolean.parseBoolean(System.getProperty(WARM_UP_PROPERTY, "true"));
    /** Calls per primitive served by the scalar loops before the vector loops take over. */
    public static final int COLD_CALLS = 400_000;
    /**
     * While cold, one call in this many also runs the vector loops on a slice: often enough for C2
     * to compile them (some 12,000 calls before the hand-over), rarely enough that their slow,
     * uncompiled runs cost little (they took 0.4 s of a 600 MB CLI run when every call did one).
     */
    private static final int PRIME_EVERY = 32;
    /** Elements of a one-row call that the vector loops take while cold. */
    private static final int COLD_HEAD = 4 * LANES;
    // Racy on purpose: an approximate count is all the hand-over needs.
    private static int axpyCalls, scaleCalls, finiteCalls, loadCalls;

    /** True once every primitive has handed over to its vector loops (or the warm-up is off). */
    public static boolean vectorLoopsInUse() {
        return !WARM_UP || Math.min(Math.min(axpyCalls, scaleCalls), Math.min(finiteCalls, loadCalls)) >= COLD_CALLS;
    }

    @Override
    protected void axpy(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w, int writableEnd) {
        if (!WARM_UP || axpyCalls >= COLD_CALLS) {
            axpyVector(acc, accOff, accStride, src, dtype, srcOff, srcStride, rows, n, w, writableEnd);
            return;
        }
        if (axpyCalls++ % PRIME_EVERY != 0) {
            ScalarKernels.axpyLoop(acc, accOff, accStride, src, dtype, srcOff, srcStride, rows, n, w);
            return;
        }
        if (rows == 1) {
            int head = Math.min(n, COLD_HEAD);
            axpyVector(acc, accOff, 0, src, dtype, srcOff, 0, 1, head, w, writableEnd);
            ScalarKernels.axpyLoop(acc, accOff + head, 0, src, dtype, srcOff + head, 0, 1, n - head, w);
        } else {
            int head = Math.min(rows, 2); // two rows: the short-row path needs more than one
            axpyVector(acc, accOff, accStride, src, dtype, srcOff, srcStride, head, n, w, writableEnd);
            ScalarKernels.axpyLoop(acc, accOff + head * accStride, accStride, src, dtype, srcOff + head * srcStride,
                    srcStride, rows - head, n, w);
        }
    }

    @Override
    protected boolean scale(float[] out, float[] in, int off, int stride, int rows, int n,
            float[] rowScale, int rowOff, float[] colScale, int colOff) {
        if (!WARM_UP || scaleCalls >= COLD_CALLS) {
            return scaleVector(out, in, off, stride, rows, n, rowScale, rowOff, colScale, colOff);
        }
        if (scaleCalls++ % PRIME_EVERY != 0) {
            return ScalarKernels.scaleLoop(out, in, off, stride, rows, n, rowScale, rowOff, colScale, colOff);
        }
        boolean first = scaleVector(out, in, off, stride, Math.min(rows, 1), n, rowScale, rowOff, colScale, colOff);
        return ScalarKernels.scaleLoop(out, in, off + stride, stride, rows - 1, n, rowScale, rowOff + 1,
                colScale, colOff) & first;
    }

    @Override
    protected boolean finite(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        if (!WARM_UP || finiteCalls >= COLD_CALLS) {
            return finiteVector(src, dtype, srcOff, srcStride, rows, n);
        }
        if (finiteCalls++ % PRIME_EVERY != 0) {
            return ScalarKernels.finiteLoop(src, dtype, srcOff, srcStride, rows, n);
        }
        if (rows == 1) {
            int head = Math.min(n, COLD_HEAD);
            return finiteVector(src, dtype, srcOff, 0, 1, head)
                    && ScalarKernels.finiteLoop(src, dtype, srcOff + head, 0, 1, n - head);
        }
        return finiteVector(src, dtype, srcOff, srcStride, 1, n)
                && ScalarKernels.finiteLoop(src, dtype, srcOff + srcStride, srcStride, rows - 1, n);
    }

    @Override
    protected void load(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n) {
        if (!WARM_UP || loadCalls >= COLD_CALLS) {
            loadVectors(out, outOff, outStride, src, dtype, srcOff, srcStride, rows, n);
            return;
        }
        if (loadCalls++ % PRIME_EVERY != 0) {
            ScalarKernels.loadLoop(out, outOff, outStride, src, dtype, srcOff, srcStride, rows, n);
            return;
        }
        if (rows == 1) {
            int head = Math.min(n, COLD_HEAD);
            loadVectors(out, outOff, 0, src, dtype, srcOff, 0, 1, head);
            ScalarKernels.loadLoop(out, outOff + head, 0, src, dtype, srcOff + head, 0, 1, n - head);
        } else {
            loadVectors(out, outOff, outStride, src, dtype, srcOff, srcStride, 1, n);
            ScalarKernels.loadLoop(out, outOff + outStride, outStride, src, dtype, srcOff + srcStride, srcStride,
                    rows - 1, n);
        }
    }

    // The hot loops are float32 only and kept small: C2 must inline every Vector API call in them,
    // or each vector becomes a heap object and the loop runs many times slower than scalar code.
    // BF16 and F16 rows are first widened into a float32 scratch block that stays in L1.

    /** Per-thread float32 scratch for widened 16-bit rows, one tile long. */
    private static final ThreadLocal<float[]> SCRATCH = ThreadLocal.withInitial(() -> new float[TILE]);

    private void axpyVector(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w, int writableEnd) {
        if (dtype != DType.F32) {
            axpyWidened(acc, accOff, accStride, src, dtype, srcOff, srcStride, rows, n, w, writableEnd);
            return;
        }
        if (n < 4 * LANES && rows > 1) {
            axpyShortRows(acc, accOff, accStride, src, srcOff, srcStride, rows, n, w, writableEnd);
            return;
        }
        FloatVector weight = FloatVector.broadcast(FLOATS, w);
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = FLOATS.indexInRange(bound, n);
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            long x = (srcOff + i * srcStride) * 4;
            int t = 0;
            // Whole vectors: one fused multiply-add per lane.
            for (; t < bound; t += LANES) {
                FloatVector.fromMemorySegment(FLOATS, src, x + t * 4L, LE)
                        .fma(weight, FloatVector.fromArray(FLOATS, acc, a + t)).intoArray(acc, a + t);
            }
            // The row's last, partial vector, masked (short rows take axpyShortRows instead).
            if (t < n) {
                FloatVector.fromMemorySegment(FLOATS, src, x + t * 4L, LE, tail)
                        .fma(weight, FloatVector.fromArray(FLOATS, acc, a + t, tail)).intoArray(acc, a + t, tail);
            }
        }
    }

    /**
     * Rows shorter than four vectors (B factors: rank 5, 20, 64, ...): straight-line code per row
     * instead of an inner loop that runs once or twice (measured 1.6x faster on rank-36 rows).
     * The partial vector at a row's end is read and written whole where that is safe: lanes past
     * the run add w * 0 to sums this thread owns, leaving them as they were (a sum is never -0.0),
     * since masked loads and stores cost several plain ones here (JDK 25, measured).
     */
    private static void axpyShortRows(float[] acc, int accOff, int accStride, MemorySegment src, long srcOff,
            long srcStride, int rows, int n, float w, int writableEnd) {
        FloatVector weight = FloatVector.broadcast(FLOATS, w);
        FloatVector zero = FloatVector.zero(FLOATS);
        int full = n / LANES;
        int t = full * LANES;
        VectorMask<Float> tail = FLOATS.indexInRange(t, n);
        long srcBytes = src.byteSize();
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            long x = (srcOff + i * srcStride) * 4;
            switch (full) {
                case 3:
                    FloatVector.fromMemorySegment(FLOATS, src, x + 8L * LANES, LE)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + 2 * LANES)).intoArray(acc, a + 2 * LANES);
                    // fall through
                case 2:
                    FloatVector.fromMemorySegment(FLOATS, src, x + 4L * LANES, LE)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + LANES)).intoArray(acc, a + LANES);
                    // fall through
                case 1:
                    FloatVector.fromMemorySegment(FLOATS, src, x, LE)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a)).intoArray(acc, a);
                    // fall through
                default:
            }
            if (t < n) {
                long bytes = x + 4L * t;
                if (a + t + LANES <= writableEnd && bytes + 4L * LANES <= srcBytes) {
                    zero.blend(FloatVector.fromMemorySegment(FLOATS, src, bytes, LE), tail)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + t)).intoArray(acc, a + t);
                } else {
                    FloatVector.fromMemorySegment(FLOATS, src, bytes, LE, tail)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + t, tail)).intoArray(acc, a + t, tail);
                }
            }
        }
    }

    /** axpy of BF16/F16 rows: a block of rows widened into scratch, then the float32 loop on it. */
    private void axpyWidened(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w, int writableEnd) {
        float[] scratch = SCRATCH.get();
        MemorySegment block = MemorySegment.ofArray(scratch);
        if (n > TILE) {
            for (int i = 0; i < rows; i++) {
                for (int t = 0; t < n; t += TILE) {
                    int len = Math.min(TILE, n - t);
                    loadVectors(scratch, 0, len, src, dtype, srcOff + i * srcStride + t, 0, 1, len);
                    axpyVector(acc, accOff + i * accStride + t, 0, block, DType.F32, 0, 0, 1, len, w, writableEnd);
                }
            }
            return;
        }
        int rowsPerBlock = TILE / n;
        for (int i = 0; i < rows; i += rowsPerBlock) {
            int count = Math.min(rowsPerBlock, rows - i);
            loadVectors(scratch, 0, n, src, dtype, srcOff + i * srcStride, srcStride, count, n);
            axpyVector(acc, accOff + i * accStride, accStride, block, DType.F32, 0, n, count, n, w, writableEnd);
        }
    }

    private static boolean scaleVector(float[] out, float[] in, int off, int stride, int rows, int n,
            float[] rowScale, int rowOff, float[] colScale, int colOff) {
        // x - x is 0 for finite x and NaN for NaN or inf: summing it flags any non-finite result.
        FloatVector check = FloatVector.zero(FLOATS);
        boolean finite = true;
        int bound = FLOATS.loopBound(n);
        for (int i = 0; i < rows; i++) {
            float rowFactor = rowScale == null ? 1f : rowScale[rowOff + i];
            int o = off + i * stride;
            int t = 0;
            if (colScale == null) {
                FloatVector factor = FloatVector.broadcast(FLOATS, rowFactor);
                for (; t < bound; t += LANES) {
                    FloatVector v = FloatVector.fromArray(FLOATS, in, o + t).mul(factor);
                    v.intoArray(out, o + t);
                    check = check.add(v.sub(v));
                }
            } else {
                FloatVector row = FloatVector.broadcast(FLOATS, rowFactor);
                for (; t < bound; t += LANES) {
                    FloatVector factor = row.mul(FloatVector.fromArray(FLOATS, colScale, colOff + t));
                    FloatVector v = FloatVector.fromArray(FLOATS, in, o + t).mul(factor);
                    v.intoArray(out, o + t);
                    check = check.add(v.sub(v));
                }
            }
            for (; t < n; t++) {
                float factor = colScale == null ? rowFactor : rowFactor * colScale[colOff + t];
                float v = in[o + t] * factor;
                out[o + t] = v;
                finite &= Float.isFinite(v);
            }
        }
        return finite && check.reduceLanes(VectorOperators.ADD) == 0f;
    }

    private static boolean finiteVector(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        for (int i = 0; i < rows; i++) {
            long x = srcOff + i * srcStride;
            boolean ok = dtype == DType.F32 ? finiteF32(src, x, n)
                    : finite16(src, x, n, dtype == DType.BF16 ? BF16_EXPONENT : F16_EXPONENT);
            if (!ok) {
                return false;
            }
        }
        return true;
    }

    private static boolean finiteF32(MemorySegment src, long index, int n) {
        FloatVector check = FloatVector.zero(FLOATS);
        int bound = FLOATS.loopBound(n);
        int t = 0;
        for (; t < bound; t += LANES) {
            FloatVector v = FloatVector.fromMemorySegment(FLOATS, src, (index + t) * 4, LE);
            check = check.add(v.sub(v));
        }
        for (; t < n; t++) {
            if (!Float.isFinite(src.get(FLOAT_LE, (index + t) * 4))) {
                return false;
            }
        }
        return check.reduceLanes(VectorOperators.ADD) == 0f;
    }

    /** A 16-bit float is NaN or infinite exactly when its exponent bits are all ones. */
    private static boolean finite16(MemorySegment src, long index, int n, short exponent) {
        VectorSpecies<Short> shorts = ShortVector.SPECIES_PREFERRED;
        int bound = shorts.loopBound(n);
        int t = 0;
        for (; t < bound; t += shorts.length()) {
            ShortVector bits = ShortVector.fromMemorySegment(shorts, src, (index + t) * 2, LE);
            if (bits.and(exponent).compare(VectorOperators.EQ, exponent).anyTrue()) {
                return false;
            }
        }
        for (; t < n; t++) {
            if ((src.get(SHORT_LE, (index + t) * 2) & exponent) == exponent) {
                return false;
            }
        }
        return true;
    }

    private static void loadVectors(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n) {
        for (int i = 0; i < rows; i++) {
            int o = outOff + i * outStride;
            long x = srcOff + i * srcStride;
            switch (dtype) {
                // A bulk copy beats an explicit vector loop for plain float data.
                case F32 -> MemorySegment.copy(src, FLOAT_LE, x * 4, out, o, n);
                case BF16 -> widenBf16(out, o, src, x, n);
                case F16 -> widenF16(out, o, src, x, n);
            }
        }
    }

    /** bfloat16 is the top half of a float32: widen to int, shift up 16 bits. */
    private static void widenBf16(float[] out, int o, MemorySegment src, long index, int n) {
        int bound = FLOATS.loopBound(n);
        int t = 0;
        for (; t < bound; t += LANES) {
            ((IntVector) ShortVector.fromMemorySegment(HALFS, src, (index + t) * 2, LE)
                    .convertShape(VectorOperators.S2I, INTS, 0))
                    .lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().intoArray(out, o + t);
        }
        for (; t < n; t++) {
            out[o + t] = DType.bf16ToFloat(src.get(SHORT_LE, (index + t) * 2));
        }
    }

    private static void widenF16(float[] out, int o, MemorySegment src, long index, int n) {
        int bound = FLOATS.loopBound(n);
        int t = 0;
        for (; t < bound; t += LANES) {
            f16ToFloat((IntVector) ShortVector.fromMemorySegment(HALFS, src, (index + t) * 2, LE)
                    .convertShape(VectorOperators.S2I, INTS, 0)).intoArray(out, o + t);
        }
        for (; t < n; t++) {
            out[o + t] = Float.float16ToFloat(src.get(SHORT_LE, (index + t) * 2));
        }
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

    /** Rows summed in float32 before each block is added into the double Gram: keeps the error near 1e-7. */
    private static final int GRAM_BLOCK = 256;

    /**
     * Register-blocked {@code X^T X}: rows are copied into a zero-padded block (row length a
     * multiple of LANES, so no masks), then for every pair of Gram rows and every group of up to
     * four vectors of columns, eight sums stay in registers while the block's rows stream past
     * from L2. Only pairs on or above the diagonal are computed; the rest is mirrored.
     */
    @Override
    protected void gramUpdate(double[] gram, float[] rows, int first, int count, int r) {
        int padded = (r + LANES - 1) / LANES * LANES;
        float[] block = new float[GRAM_BLOCK * padded];
        float[] sums = new float[padded * padded];
        for (int start = first; start < first + count; start += GRAM_BLOCK) {
            int rowsHere = Math.min(GRAM_BLOCK, first + count - start);
            for (int row = 0; row < rowsHere; row++) {
                System.arraycopy(rows, (start + row) * r, block, row * padded, r);
            }
            java.util.Arrays.fill(sums, 0f);
            for (int i = 0; i < r; i += 2) {
                // Column groups from the one holding i on: the diagonal's left is mirrored later.
                for (int j = i / LANES * LANES; j < padded; j += 4 * LANES) {
                    gramTile(block, rowsHere, padded, i, j, Math.min(4, (padded - j) / LANES), sums);
                }
            }
            for (int i = 0; i < r; i++) {
                for (int j = i; j < r; j++) {
                    float v = sums[i * padded + j];
                    gram[i * r + j] += v;
                    if (j != i) {
                        gram[j * r + i] += v;
                    }
                }
            }
        }
    }

    /** sums[i..i+1][j .. j + vectors * LANES) = sum over the block's rows of x[i or i+1] * x[j..]. */
    private static void gramTile(float[] block, int rows, int stride, int i, int j, int vectors, float[] sums) {
        FloatVector a0 = FloatVector.zero(FLOATS), a1 = a0, a2 = a0, a3 = a0;
        FloatVector b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        boolean second = i + 1 < stride;
        for (int row = 0; row < rows; row++) {
            int x = row * stride;
            FloatVector xi = FloatVector.broadcast(FLOATS, block[x + i]);
            FloatVector xk = FloatVector.broadcast(FLOATS, second ? block[x + i + 1] : 0f);
            FloatVector v0 = FloatVector.fromArray(FLOATS, block, x + j);
            a0 = v0.fma(xi, a0);
            b0 = v0.fma(xk, b0);
            if (vectors > 1) {
                FloatVector v1 = FloatVector.fromArray(FLOATS, block, x + j + LANES);
                a1 = v1.fma(xi, a1);
                b1 = v1.fma(xk, b1);
                if (vectors > 2) {
                    FloatVector v2 = FloatVector.fromArray(FLOATS, block, x + j + 2 * LANES);
                    a2 = v2.fma(xi, a2);
                    b2 = v2.fma(xk, b2);
                    if (vectors > 3) {
                        FloatVector v3 = FloatVector.fromArray(FLOATS, block, x + j + 3 * LANES);
                        a3 = v3.fma(xi, a3);
                        b3 = v3.fma(xk, b3);
                    }
                }
            }
        }
        int rowA = i * stride + j, rowB = (i + 1) * stride + j;
        a0.intoArray(sums, rowA);
        if (vectors > 1) {
            a1.intoArray(sums, rowA + LANES);
        }
        if (vectors > 2) {
            a2.intoArray(sums, rowA + 2 * LANES);
        }
        if (vectors > 3) {
            a3.intoArray(sums, rowA + 3 * LANES);
        }
        if (second) {
            b0.intoArray(sums, rowB);
            if (vectors > 1) {
                b1.intoArray(sums, rowB + LANES);
            }
            if (vectors > 2) {
                b2.intoArray(sums, rowB + 2 * LANES);
            }
            if (vectors > 3) {
                b3.intoArray(sums, rowB + 3 * LANES);
            }
        }
    }
}
