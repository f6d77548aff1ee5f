package io.fedlora.kernels.cpu;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
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
 * {@code ScalarKernels}, a vector of float32 lanes at a time. Loaded by class name only, so the
 * rest of fedlora runs on a JVM without the incubator module. The vector loops run from the first
 * call; a one-shot process's JIT warm-up is the command line's business (bin/fedlora's AOT cache).
 *
 * <p>Accumulation is {@code x.fma(w, acc)}, one rounding like {@code Math.fma(w, x, acc)}, so
 * accumulate, weighted sum, finish, pad and load agree with the scalar reference bit for bit
 * (KernelsContractTest, at 128, 256 and 512 bits); only the Gram dot products sum in another order.
 *
 * <p>What made the short rows of B factors fast here (2-core Zen 4, JDK 25), measured: loads from
 * {@code float[]} rather than through {@code MemorySegment} (whose base and offset become virtual
 * calls once several kinds of segment have been seen); straight-line code for rows of at most four
 * vectors; sums rows padded to whole vectors (CpuKernels), so the row's last partial vector is a
 * whole load blended with zero instead of a masked load and store; and, in the batch path, four
 * sources per pass over a tile, so the sums are loaded and stored once per four fmas.
 */
public final class VectorKernels extends CpuKernels {

    /**
     * System property: the vector size in bits, 128, 256 or 512 (default: the platform's preferred
     * size). Read once. Lets the tests hold every width's short-row paths to the contract on one
     * machine, as Lucene's {@code tests.vectorsize} does.
     */
    public static final String BITS_PROPERTY = "fedlora.vector.bits";
    private static final String BITS = System.getProperty(BITS_PROPERTY, "");
    private static final VectorSpecies<Float> FLOATS = species(BITS);
    private static final int LANES = FLOATS.length();
    /** 16-bit inputs: half as many bits as a float vector, so one load widens to one float vector. */
    private static final VectorSpecies<Short> HALFS =
            VectorSpecies.of(short.class, VectorShape.forBitSize(FLOATS.vectorBitSize() / 2));
    /** 16-bit values, as many bits as a float vector: the finite scan of BF16/F16 rows. */
    private static final VectorSpecies<Short> SHORTS =
            VectorSpecies.of(short.class, VectorShape.forBitSize(FLOATS.vectorBitSize()));
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
        if (!BITS.isEmpty() && (!BITS.equals(Integer.toString(FLOATS.vectorBitSize()))
                || FLOATS.vectorBitSize() > FloatVector.SPECIES_PREFERRED.vectorBitSize())) {
            throw new UnsupportedOperationException(BITS_PROPERTY + "=" + BITS + ": expected 128, 256 or 512, at most "
                    + FloatVector.SPECIES_PREFERRED.vectorBitSize() + " (the widest vectors here)");
        }
        if (LANES < 4) {
            // A 64-bit preferred shape means the JIT has no real vector unit to map to (or C2 is off).
            throw new UnsupportedOperationException("the Vector API reports only " + FLOATS.vectorBitSize()
                    + "-bit vectors here (C2 disabled or no SIMD); scalar loops are as fast");
        }
    }

    /** The species for a {@link #BITS_PROPERTY} value; anything else is the preferred one (the constructor refuses it). */
    private static VectorSpecies<Float> species(String bits) {
        return switch (bits) {
            case "128" -> FloatVector.SPECIES_128;
            case "256" -> FloatVector.SPECIES_256;
            case "512" -> FloatVector.SPECIES_512;
            default -> FloatVector.SPECIES_PREFERRED;
        };
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

    // The hot loops are float32 only and kept small: C2 must inline every Vector API call in them,
    // or each vector becomes a heap object and the loop runs many times slower than scalar code.
    // BF16 and F16 rows are first widened into a float32 scratch block that stays in L1.

    /** Per-thread float32 scratch for widened 16-bit rows, one tile long. */
    private static final ThreadLocal<float[]> WIDENED = ThreadLocal.withInitial(() -> new float[TILE]);

    @Override
    void axpy(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w) {
        float[] array = floatArray(src, dtype);
        if (array != null) {
            int base = (int) (src.address() / 4);
            axpyArray(acc, accOff, accStride, array, Math.toIntExact(base + srcOff), Math.toIntExact(srcStride), rows, n, w);
        } else {
            axpyCopied(acc, accOff, accStride, src, dtype, srcOff, srcStride, rows, n, w);
        }
    }

    /**
     * The float[] behind a heap float32 segment, else null. The hot loops load from arrays only:
     * a load from a MemorySegment calls the segment's base and offset virtually wherever more than
     * two kinds of segment have passed (heap, native, mapped), several times slower on short rows.
     */
    private static float[] floatArray(MemorySegment src, DType dtype) {
        return dtype == DType.F32 && src.address() % Float.BYTES == 0
                && src.heapBase().orElse(null) instanceof float[] array ? array : null;
    }

    /**
     * The float32 axpy on arrays. Every row is whole vectors on the acc side (its padding takes
     * fma(w, 0, v) = v); on the source side the row's last, partial vector is loaded whole and its
     * lanes past the row zeroed (a blend), which costs far less than a masked load here, except
     * where a whole vector would read past the end of the array.
     */
    private static void axpyArray(float[] acc, int accOff, int accStride, float[] src, int srcOff, int srcStride,
            int rows, int n, float w) {
        if (n <= 4 * LANES && rows > 1) {
            axpyShortRows(acc, accOff, accStride, src, srcOff, srcStride, rows, n, w);
            return;
        }
        FloatVector weight = FloatVector.broadcast(FLOATS, w);
        FloatVector zero = FloatVector.zero(FLOATS);
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = FLOATS.indexInRange(bound, n);
        int lastSafe = src.length - LANES;
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            int x = srcOff + i * srcStride;
            int t = 0;
            // Whole vectors: one fused multiply-add per lane.
            for (; t < bound; t += LANES) {
                FloatVector.fromArray(FLOATS, src, x + t).fma(weight, FloatVector.fromArray(FLOATS, acc, a + t))
                        .intoArray(acc, a + t);
            }
            // The row's last, partial vector.
            if (t < n) {
                FloatVector v = x + t <= lastSafe
                        ? zero.blend(FloatVector.fromArray(FLOATS, src, x + t), tail)
                        : FloatVector.fromArray(FLOATS, src, x + t, tail);
                v.fma(weight, FloatVector.fromArray(FLOATS, acc, a + t)).intoArray(acc, a + t);
            }
        }
    }

    /**
     * Rows of at most four vectors (B factors: rank 5, 20, 37, 64, ...): straight-line code per
     * row instead of an inner loop that runs once or twice (measured 1.2x faster here on ranks
     * 8-64), the partial vector as in axpyArray.
     */
    private static void axpyShortRows(float[] acc, int accOff, int accStride, float[] src, int srcOff, int srcStride,
            int rows, int n, float w) {
        FloatVector weight = FloatVector.broadcast(FLOATS, w);
        FloatVector zero = FloatVector.zero(FLOATS);
        int full = n / LANES;
        int t = full * LANES;
        VectorMask<Float> tail = FLOATS.indexInRange(t, n);
        int lastSafe = src.length - LANES;
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            int x = srcOff + i * srcStride;
            switch (full) {
                case 4:
                    FloatVector.fromArray(FLOATS, src, x + 3 * LANES)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + 3 * LANES)).intoArray(acc, a + 3 * LANES);
                    // fall through
                case 3:
                    FloatVector.fromArray(FLOATS, src, x + 2 * LANES)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + 2 * LANES)).intoArray(acc, a + 2 * LANES);
                    // fall through
                case 2:
                    FloatVector.fromArray(FLOATS, src, x + LANES)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a + LANES)).intoArray(acc, a + LANES);
                    // fall through
                case 1:
                    FloatVector.fromArray(FLOATS, src, x)
                            .fma(weight, FloatVector.fromArray(FLOATS, acc, a)).intoArray(acc, a);
                    // fall through
                default:
            }
            if (t < n) {
                FloatVector v = x + t <= lastSafe
                        ? zero.blend(FloatVector.fromArray(FLOATS, src, x + t), tail)
                        : FloatVector.fromArray(FLOATS, src, x + t, tail);
                v.fma(weight, FloatVector.fromArray(FLOATS, acc, a + t)).intoArray(acc, a + t);
            }
        }
    }

    /** Sources fused into one pass over the sums: loads and stores of the sums are 1 + 1 per GROUP fmas. */
    private static final int GROUP = 4;

    /**
     * Consecutive float[] sources that cover the same rows of the tile go through
     * {@link #axpyGroup} up to GROUP at a time; any other source alone. A source that misses the
     * tile is skipped; skipping it, or fusing, leaves every cell's fmas in source order.
     */
    @Override
    void addSources(float[] sums, int base, int stride, int r0, int r1, int c0, int c1, Matrix[] sources,
            float[] weights) {
        float[][] arrays = new float[GROUP][];
        int[] offsets = new int[GROUP], strides = new int[GROUP], widths = new int[GROUP];
        float[] w = new float[GROUP];
        int count = 0, groupEnd = -1;
        for (int k = 0; k < sources.length; k++) {
            Matrix src = sources[k];
            int re = Math.min(r1, src.rows()), ce = Math.min(c1, src.cols());
            if (re <= r0 || ce <= c0) {
                continue;
            }
            float[] array = floatArray(src.data(), src.dtype());
            int offset = 0;
            if (array != null) {
                offset = Math.toIntExact(src.data().address() / 4 + src.offset() + (long) r0 * src.rowStride() + c0);
                // Its last row readable as whole vectors as wide as the tile, or it goes alone (masked loads).
                long end = offset + (long) (re - r0 - 1) * src.rowStride() + stride;
                if (end > array.length) {
                    array = null;
                }
            }
            if (count > 0 && (array == null || re != groupEnd || count == GROUP)) {
                axpyGroup(sums, base + r0 * stride + c0, stride, groupEnd - r0, count, arrays, offsets, strides, widths, w);
                count = 0;
            }
            if (array == null) {
                addTile(sums, base, stride, r0, r1, c0, c1, src, weights[k]);
                continue;
            }
            arrays[count] = array;
            offsets[count] = offset;
            strides[count] = src.rowStride();
            widths[count] = ce - c0;
            w[count] = weights[k];
            groupEnd = re;
            count++;
        }
        if (count > 0) {
            axpyGroup(sums, base + r0 * stride + c0, stride, groupEnd - r0, count, arrays, offsets, strides, widths, w);
        }
    }

    /**
     * {@code count} (1 to GROUP) axpys over the same rows in one pass: per vector of the sums, one
     * load, the sources' fmas in order, one store. Source g adds to the first {@code widths[g]}
     * columns; unused slots have width 0. Every source's rows must be readable as whole vectors up
     * to the widest source's padded width (addSources checks).
     */
    private static void axpyGroup(float[] acc, int accOff, int accStride, int rows, int count, float[][] arrays,
            int[] offsets, int[] strides, int[] widths, float[] w) {
        if (count == 1) {
            axpyArray(acc, accOff, accStride, arrays[0], offsets[0], strides[0], rows, widths[0], w[0]);
            return;
        }
        float[] s0 = arrays[0], s1 = arrays[1], s2 = count > 2 ? arrays[2] : s0, s3 = count > 3 ? arrays[3] : s0;
        int n0 = widths[0], n1 = widths[1], n2 = count > 2 ? widths[2] : 0, n3 = count > 3 ? widths[3] : 0;
        // An unused slot reads where source 0 does (known to be readable) and adds nothing (width 0).
        int st0 = strides[0], st1 = strides[1], st2 = count > 2 ? strides[2] : st0, st3 = count > 3 ? strides[3] : st0;
        int o0 = offsets[0], o1 = offsets[1], o2 = count > 2 ? offsets[2] : o0, o3 = count > 3 ? offsets[3] : o0;
        FloatVector w0 = FloatVector.broadcast(FLOATS, w[0]), w1 = FloatVector.broadcast(FLOATS, w[1]);
        FloatVector w2 = FloatVector.broadcast(FLOATS, count > 2 ? w[2] : 0f);
        FloatVector w3 = FloatVector.broadcast(FLOATS, count > 3 ? w[3] : 0f);
        int width = Math.max(Math.max(n0, n1), Math.max(n2, n3));
        for (int i = 0; i < rows; i++) {
            int a = accOff + i * accStride;
            int x0 = o0 + i * st0, x1 = o1 + i * st1, x2 = o2 + i * st2, x3 = o3 + i * st3;
            // Branch-free and written out per source: C2 keeps vectors in registers only when they
            // do not cross calls or merge at control flow. Lanes past a source's row keep the sum
            // as it was (a blend), whatever was loaded there.
            for (int t = 0; t < width; t += LANES) {
                FloatVector sum = FloatVector.fromArray(FLOATS, acc, a + t);
                sum = sum.blend(FloatVector.fromArray(FLOATS, s0, x0 + t).fma(w0, sum), FLOATS.indexInRange(t, n0));
                sum = sum.blend(FloatVector.fromArray(FLOATS, s1, x1 + t).fma(w1, sum), FLOATS.indexInRange(t, n1));
                sum = sum.blend(FloatVector.fromArray(FLOATS, s2, x2 + t).fma(w2, sum), FLOATS.indexInRange(t, n2));
                sum = sum.blend(FloatVector.fromArray(FLOATS, s3, x3 + t).fma(w3, sum), FLOATS.indexInRange(t, n3));
                sum.intoArray(acc, a + t);
            }
        }
    }

    /** axpy of rows that are not a float[] (BF16/F16, native or mapped memory): a block of rows copied or widened into scratch, then the array loop on it. */
    private void axpyCopied(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w) {
        float[] scratch = WIDENED.get();
        if (n > TILE) {
            for (int i = 0; i < rows; i++) {
                for (int t = 0; t < n; t += TILE) {
                    int len = Math.min(TILE, n - t);
                    loadVectors(scratch, 0, len, src, dtype, srcOff + i * srcStride + t, 0, 1, len);
                    axpyArray(acc, accOff + i * accStride + t, 0, scratch, 0, 0, 1, len, w);
                }
            }
            return;
        }
        int rowsPerBlock = TILE / n;
        for (int i = 0; i < rows; i += rowsPerBlock) {
            int count = Math.min(rowsPerBlock, rows - i);
            loadVectors(scratch, 0, n, src, dtype, srcOff + i * srcStride, srcStride, count, n);
            axpyArray(acc, accOff + i * accStride, accStride, scratch, 0, n, count, n, w);
        }
    }

    @Override
    boolean scale(float[] out, int outOff, int outStride, float[] in, int inOff, int inStride, int rows, int n,
            float[] rowScale, int rowOff, float[] colScale, int colOff) {
        // in's rows are padded, so every row is whole vectors of in; the column factors are copied
        // once into a padded block for the same reason. out gets exactly n elements per row.
        float[] columns = null;
        if (colScale != null) {
            columns = new float[padded(n)];
            System.arraycopy(colScale, colOff, columns, 0, n);
        }
        int bound = FLOATS.loopBound(n);
        VectorMask<Float> tail = FLOATS.indexInRange(bound, n);
        // x - x is 0 for finite x and NaN for NaN or inf: summing it flags any non-finite result.
        FloatVector check = FloatVector.zero(FLOATS);
        for (int i = 0; i < rows; i++) {
            FloatVector row = FloatVector.broadcast(FLOATS, rowScale == null ? 1f : rowScale[rowOff + i]);
            int o = outOff + i * outStride, x = inOff + i * inStride;
            int t = 0;
            for (; t < bound; t += LANES) {
                FloatVector factor = columns == null ? row : row.mul(FloatVector.fromArray(FLOATS, columns, t));
                FloatVector v = FloatVector.fromArray(FLOATS, in, x + t).mul(factor);
                v.intoArray(out, o + t);
                check = check.add(v.sub(v));
            }
            if (t < n) {
                FloatVector factor = columns == null ? row : row.mul(FloatVector.fromArray(FLOATS, columns, t));
                FloatVector v = FloatVector.fromArray(FLOATS, in, x + t).mul(factor);
                v.intoArray(out, o + t, tail);
                check = check.add(v.sub(v), tail);
            }
        }
        return check.reduceLanes(VectorOperators.ADD) == 0f;
    }

    @Override
    boolean finite(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        return finiteVector(src, dtype, srcOff, srcStride, rows, n);
    }

    @Override
    void load(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n) {
        loadVectors(out, outOff, outStride, src, dtype, srcOff, srcStride, rows, n);
    }

    /** Per-thread scratch for 16-bit rows being scanned, one tile long. */
    private static final ThreadLocal<short[]> HALF_SCRATCH = ThreadLocal.withInitial(() -> new short[TILE]);

    /**
     * The scan reads float[] rows in place and copies any other memory into scratch a tile at a
     * time first (a bulk copy per tile, not a virtual segment access per vector; see floatArray).
     */
    private static boolean finiteVector(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n) {
        float[] array = floatArray(src, dtype);
        int base = array == null ? 0 : (int) (src.address() / 4);
        for (int i = 0; i < rows; i++) {
            long x = srcOff + i * srcStride;
            for (long t = 0; t < n; t += TILE) {
                int len = (int) Math.min(TILE, n - t);
                boolean ok;
                if (array != null) {
                    ok = finiteF32(array, Math.toIntExact(base + x + t), len);
                } else if (dtype == DType.F32) {
                    float[] scratch = WIDENED.get();
                    MemorySegment.copy(src, FLOAT_LE, (x + t) * 4, scratch, 0, len);
                    ok = finiteF32(scratch, 0, len);
                } else {
                    short[] scratch = HALF_SCRATCH.get();
                    MemorySegment.copy(src, SHORT_LE, (x + t) * 2, scratch, 0, len);
                    ok = finite16(scratch, len, dtype == DType.BF16 ? BF16_EXPONENT : F16_EXPONENT);
                }
                if (!ok) {
                    return false;
                }
            }
        }
        return true;
    }

    private static boolean finiteF32(float[] src, int offset, int n) {
        // x - x is 0 for finite x and NaN for NaN or inf; two sums keep two adds in flight.
        FloatVector check0 = FloatVector.zero(FLOATS), check1 = check0;
        int bound2 = n / (2 * LANES) * (2 * LANES), bound = FLOATS.loopBound(n);
        int t = 0;
        for (; t < bound2; t += 2 * LANES) {
            FloatVector v0 = FloatVector.fromArray(FLOATS, src, offset + t);
            FloatVector v1 = FloatVector.fromArray(FLOATS, src, offset + t + LANES);
            check0 = check0.add(v0.sub(v0));
            check1 = check1.add(v1.sub(v1));
        }
        for (; t < bound; t += LANES) {
            FloatVector v = FloatVector.fromArray(FLOATS, src, offset + t);
            check0 = check0.add(v.sub(v));
        }
        for (; t < n; t++) {
            if (!Float.isFinite(src[offset + t])) {
                return false;
            }
        }
        return check0.add(check1).reduceLanes(VectorOperators.ADD) == 0f;
    }

    /** A 16-bit float is NaN or infinite exactly when its exponent bits are all ones. */
    private static boolean finite16(short[] src, int n, short exponent) {
        int bound = SHORTS.loopBound(n);
        int t = 0;
        for (; t < bound; t += SHORTS.length()) {
            ShortVector bits = ShortVector.fromArray(SHORTS, src, t);
            if (bits.and(exponent).compare(VectorOperators.EQ, exponent).anyTrue()) {
                return false;
            }
        }
        for (; t < n; t++) {
            if ((src[t] & exponent) == exponent) {
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

    // 16-bit rows are copied into a short[] a tile at a time and widened from there, so that this
    // backend reads the caller's memory only through float[] loads and MemorySegment.copy, whose
    // faults (a mapped file truncated under us) the JVM reports as InternalError. The facade's
    // tests saw a SIGBUS kill the JVM in C2-compiled Vector API code reading such a mapping.

    /** bfloat16 is the top half of a float32: widen to int, shift up 16 bits. */
    private static void widenBf16(float[] out, int o, MemorySegment src, long index, int n) {
        short[] halves = HALF_SCRATCH.get();
        for (int start = 0; start < n; start += TILE) {
            int len = Math.min(TILE, n - start), to = o + start;
            MemorySegment.copy(src, SHORT_LE, (index + start) * 2, halves, 0, len);
            int bound = FLOATS.loopBound(len);
            int t = 0;
            for (; t < bound; t += LANES) {
                ((IntVector) ShortVector.fromArray(HALFS, halves, t).convertShape(VectorOperators.S2I, INTS, 0))
                        .lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().intoArray(out, to + t);
            }
            for (; t < len; t++) {
                out[to + t] = DType.bf16ToFloat(halves[t]);
            }
        }
    }

    private static void widenF16(float[] out, int o, MemorySegment src, long index, int n) {
        short[] halves = HALF_SCRATCH.get();
        for (int start = 0; start < n; start += TILE) {
            int len = Math.min(TILE, n - start), to = o + start;
            MemorySegment.copy(src, SHORT_LE, (index + start) * 2, halves, 0, len);
            int bound = FLOATS.loopBound(len);
            int t = 0;
            for (; t < bound; t += LANES) {
                f16ToFloat((IntVector) ShortVector.fromArray(HALFS, halves, t)
                        .convertShape(VectorOperators.S2I, INTS, 0)).intoArray(out, to + t);
            }
            for (; t < len; t++) {
                out[to + t] = Float.float16ToFloat(halves[t]);
            }
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
    void gramUpdate(double[] gram, float[] rows, int first, int count, int r) {
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
