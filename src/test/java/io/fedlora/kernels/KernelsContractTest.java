package io.fedlora.kernels;

import io.fedlora.tensor.Matrix;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.fedlora.tensor.DType;
import io.fedlora.Reference64;
import io.fedlora.tensor.Tensor;
import io.fedlora.TestClients;
import io.fedlora.kernels.cpu.ScalarKernels;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * What every backend must do, checked against {@link ScalarKernels} on seeded inputs. Each backend's
 * test subclasses this and supplies {@link #kernels()}. Accumulate, weighted sum, finish and pad
 * match the reference bit for bit (every backend does the same float32 operations per element:
 * fma in source order from +0, then one multiply by the float32 factor); the weights are not
 * dyadic (0.3, 1/3, 7.1), so a backend that rounds differently anywhere (a multiply and an add for
 * an fma, another summation order) differs in the last bit somewhere. Only the Gram-based norm
 * sums in another order and is held to a tolerance.
 *
 * <p>Sizes and the code paths they reach (vector backend, any of 4, 8 or 16 lanes): 1 is all
 * tail; primes (7, 13, 61, 1031) are vector body plus a tail on any lane count; blocks of several
 * rows of at most four vectors (3x7, 5x13, 7x61, 64x5, 4099x37, and every rank 1..70 in
 * {@link #everyRankFrom1To70MatchesScalar}) take the straight-line short-row path, with a
 * whole-vector tail inside the source and a masked one at its end; 16411 columns is wider than a
 * tile (16384), so rows are cut into column tiles; 131101 and more elements split across threads.
 * Sources come as heap float[] (the vector backend reads them in place), little-endian bytes on
 * the heap and native memory (both copied or widened through scratch first), each also strided.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
public abstract class KernelsContractTest {

    /** (rows, cols) of the destination; see the class comment for the path each one reaches. */
    static final int[][] SHAPES = {{1, 1}, {3, 7}, {5, 13}, {7, 61}, {64, 5}, {2, 1031}, {3, 16411}, {1, 131101}, {4099, 37}};

    /** Non-dyadic weights: products and sums of these round, so every rounding step shows. */
    static final float[] WEIGHTS = {0.3f, 1f / 3, 7.1f, 0.7f, 2.9f};

    /** Where a source's data lives; the vector backend takes a different path for each. */
    enum Memory { FLOATS, BYTES, NATIVE }

    private final ScalarKernels reference = new ScalarKernels();

    /** The backend under test. */
    protected abstract Kernels kernels();

    @AfterAll
    void closeReference() {
        reference.close();
    }

    /** A source corner of up to rows x cols inside a wider, strided buffer of the given dtype. */
    static Matrix source(SplittableRandom random, DType dtype, int rows, int cols, int extraCols) {
        return source(random, dtype, rows, cols, extraCols, Memory.FLOATS);
    }

    static Matrix source(SplittableRandom random, DType dtype, int rows, int cols, int extraCols, Memory memory) {
        int stride = cols + extraCols;
        float[] values = TestClients.values(random, rows * stride);
        return new Matrix(in(memory, Tensor.convert(values, dtype, rows, stride).data()), dtype, 0, rows, cols, stride);
    }

    /** The same bytes in the given kind of memory (16-bit data is bytes on the heap already). */
    static MemorySegment in(Memory memory, MemorySegment data) {
        if (memory == Memory.BYTES && data.heapBase().orElse(null) instanceof float[]) {
            MemorySegment bytes = MemorySegment.ofArray(new byte[Math.toIntExact(data.byteSize())]);
            bytes.copyFrom(data);
            return bytes;
        } else if (memory == Memory.NATIVE) {
            MemorySegment copy = Arena.ofAuto().allocate(data.byteSize(), 64);
            copy.copyFrom(data);
            return copy;
        }
        return data;
    }

    static float[] scales(SplittableRandom random, int n) {
        float[] s = new float[n];
        for (int i = 0; i < n; i++) {
            s[i] = (float) (0.25 + random.nextDouble());
        }
        return s;
    }

    /** Bit for bit (raw bits: +0 and -0 differ, and so do NaN payloads), naming the first element that differs. */
    public static void assertSameBits(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what + ": length");
        for (int i = 0; i < want.length; i++) {
            if (Float.floatToRawIntBits(want[i]) != Float.floatToRawIntBits(got[i])) {
                fail(what + ": element " + i + " is " + got[i] + " (0x" + Integer.toHexString(Float.floatToRawIntBits(got[i]))
                        + "), reference " + want[i] + " (0x" + Integer.toHexString(Float.floatToRawIntBits(want[i])) + ")");
            }
        }
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void accumulatorMatchesScalar(DType dtype) {
        for (Memory memory : Memory.values()) {
            for (int[] shape : SHAPES) {
                int rows = shape[0], cols = shape[1];
                SplittableRandom random = new SplittableRandom(rows * 31L + cols);
                // Three clients: full size and contiguous, a strided corner (a B cut), a shorter A.
                Matrix[] sources = {
                    source(random, dtype, rows, cols, 0, memory),
                    source(random, dtype, rows, Math.max(1, cols - 2), 3, memory),
                    source(random, dtype, Math.max(1, rows / 2), cols, 0, memory),
                };
                float[] rowScale = scales(random, rows), colScale = scales(random, cols);
                float[] want = new float[rows * cols], got = new float[rows * cols];
                try (Accumulator r = reference.newAccumulator(rows, cols); Accumulator k = kernels().newAccumulator(rows, cols)) {
                    for (int s = 0; s < sources.length; s++) {
                        r.add(sources[s], WEIGHTS[s]);
                        k.add(sources[s], WEIGHTS[s]);
                    }
                    r.finish(want, rowScale, colScale);
                    k.finish(got, rowScale, colScale);
                    assertSameBits(want, got, "add+finish " + dtype + " " + memory + " " + rows + "x" + cols);
                    // The sums are unchanged by finish: a second finish, unscaled, gives the raw sums.
                    r.finish(want, null, null);
                    k.finish(got, null, null);
                }
                assertSameBits(want, got, "raw sums after finish " + dtype + " " + memory + " " + rows + "x" + cols);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void weightedSumMatchesScalarAndTheAccumulatorPath(DType dtype) {
        for (Memory memory : Memory.values()) {
            for (int[] shape : SHAPES) {
                int rows = shape[0], cols = shape[1];
                SplittableRandom random = new SplittableRandom(rows * 17L + cols);
                Matrix[] sources = {
                    source(random, dtype, Math.max(1, rows - 1), cols, 0, memory),
                    source(random, dtype, rows, cols, 0, memory),
                    source(random, dtype, rows, Math.max(1, cols / 3), 2, memory),
                    source(random, dtype, 1, 1, 0, memory),
                };
                float[] rowScale = scales(random, rows);
                float[] colScale = random.nextBoolean() ? scales(random, cols) : null;
                float[] want = new float[rows * cols], got = new float[rows * cols], viaAdd = new float[rows * cols];
                assertEquals(-1, reference.weightedSum(want, rows, cols, sources, WEIGHTS, rowScale, colScale));
                assertEquals(-1, kernels().weightedSum(got, rows, cols, sources, WEIGHTS, rowScale, colScale));
                try (Accumulator acc = kernels().newAccumulator(rows, cols)) {
                    for (int s = 0; s < sources.length; s++) {
                        acc.add(sources[s], WEIGHTS[s]);
                    }
                    acc.finish(viaAdd, rowScale, colScale);
                }
                String what = dtype + " " + memory + " " + rows + "x" + cols;
                assertSameBits(want, got, "weightedSum " + what);
                assertSameBits(want, viaAdd, "add+finish vs scalar weightedSum " + what);
            }
        }
    }

    /**
     * B factors of every global rank R in 1..70 (one to five vectors of any width, each tail
     * length) from five clients of ranks R, R - 1, about R / 2, 1 and R, one of them strided, and A
     * factors of those ranks: weighted sum and add + finish, bit for bit. 1031 rows of B and A rows
     * of 1031 make several tiles, so the vector backend's fused passes over up to four sources run
     * (a source's last tile goes alone), as do groups cut short by a source with fewer rows.
     */
    @Test
    void everyRankFrom1To70MatchesScalar() {
        int out = 1031, in = 1031;
        for (int globalRank = 1; globalRank <= 70; globalRank++) {
            SplittableRandom random = new SplittableRandom(globalRank);
            int[] ranks = {globalRank, Math.max(1, globalRank - 1), (globalRank + 1) / 2, 1, globalRank};
            Matrix[] b = new Matrix[ranks.length], a = new Matrix[ranks.length];
            for (int k = 0; k < ranks.length; k++) {
                b[k] = source(random, DType.F32, out, ranks[k], k == 2 ? 5 : 0);
                a[k] = source(random, DType.F32, ranks[k], in, 0);
            }
            float[] colScale = scales(random, globalRank), rowScale = scales(random, globalRank);
            checkSum(b, out, globalRank, null, colScale, "B rank " + globalRank);
            checkSum(a, globalRank, in, rowScale, null, "A rank " + globalRank);
        }
    }

    private void checkSum(Matrix[] sources, int rows, int cols, float[] rowScale, float[] colScale, String what) {
        float[] want = new float[rows * cols], got = new float[rows * cols], viaAdd = new float[rows * cols];
        assertEquals(-1, reference.weightedSum(want, rows, cols, sources, WEIGHTS, rowScale, colScale));
        assertEquals(-1, kernels().weightedSum(got, rows, cols, sources, WEIGHTS, rowScale, colScale));
        try (Accumulator acc = kernels().newAccumulator(rows, cols)) {
            for (int k = 0; k < sources.length; k++) {
                acc.add(sources[k], WEIGHTS[k]);
            }
            acc.finish(viaAdd, rowScale, colScale);
        }
        assertSameBits(want, got, "weightedSum " + what);
        assertSameBits(want, viaAdd, "add+finish " + what);
    }

    @Test
    void weightedSumNamesTheSourceHoldingNaNOrInfinity() {
        SplittableRandom random = new SplittableRandom(7);
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            for (int[] shape : new int[][] {{5, 13}, {3, 16411}, {1, 131101}}) {
                int rows = shape[0], cols = shape[1];
                float[][] data = new float[3][];
                Matrix[] sources = new Matrix[3];
                for (int s = 0; s < 3; s++) {
                    data[s] = TestClients.values(random, rows * cols);
                    sources[s] = Matrix.of(data[s], rows, cols);
                }
                data[2][rows * cols - 1] = bad; // the last element: a tail on every backend
                float[] out = new float[rows * cols];
                int found = kernels().weightedSum(out, rows, cols, sources, new float[] {1, 0, 1}, null, null);
                assertEquals(2, found, bad + " in " + rows + "x" + cols);
            }
        }
    }

    @Test
    void weightedSumReportsOverflowOfFiniteInputs() {
        float[] big = {Float.MAX_VALUE, 1f};
        Matrix[] sources = {Matrix.of(big, 1, 2), Matrix.of(big, 1, 2)};
        float[] out = new float[2];
        assertEquals(2, kernels().weightedSum(out, 1, 2, sources, new float[] {1, 1}, null, null));
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void padAndTruncateCopyBitForBit(DType dtype) {
        for (int s = 0; s < SHAPES.length; s++) {
            int rows = SHAPES[s][0], cols = SHAPES[s][1];
            SplittableRandom random = new SplittableRandom(rows + cols * 101L);
            float[] donor = TestClients.values(random, (rows + 3) * (cols + 2));
            // Each kind of memory in turn (all of them for every shape would triple the time).
            Memory memory = Memory.values()[s % Memory.values().length];
            Matrix src = source(random, dtype, rows, cols, 1, memory);
            // Pad A-like (more rows), pad B-like (more columns), with zeros and with a donor; truncate.
            int[][] targets = {{rows + 3, cols}, {rows, cols + 2}, {rows + 3, cols + 2}};
            for (int[] t : targets) {
                for (boolean withDonor : new boolean[] {false, true}) {
                    float[] d = withDonor ? java.util.Arrays.copyOf(donor, t[0] * t[1]) : null;
                    float[] want = new float[t[0] * t[1]], got = new float[t[0] * t[1]];
                    java.util.Arrays.fill(got, 42f); // every cell must be written
                    reference.pad(want, t[0], t[1], src, d);
                    kernels().pad(got, t[0], t[1], src, d);
                    assertSameBits(want, got, "pad " + dtype + " " + memory + " " + rows + "x" + cols + " -> " + t[0] + "x" + t[1]);
                }
            }
            int keepRows = Math.max(1, rows / 2), keepCols = Math.max(1, cols / 2);
            float[] want = new float[keepRows * keepCols], got = new float[keepRows * keepCols];
            reference.pad(want, keepRows, keepCols, src.corner(keepRows, keepCols), null);
            kernels().pad(got, keepRows, keepCols, src.corner(keepRows, keepCols), null);
            assertSameBits(want, got, "truncate " + dtype + " " + memory + " " + rows + "x" + cols);
        }
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void allFiniteFindsEveryNonFiniteValue(DType dtype) {
        // 16411 is more than a tile (16384): the vector backend scans memory that is not a float[] a
        // tile at a time; 262147 floats is a 1 MiB scan.
        for (Memory memory : Memory.values()) {
            for (int n : new int[] {1, 7, 16, 17, 61, 1031, 16411, 262147}) {
                SplittableRandom random = new SplittableRandom(n);
                float[] clean = TestClients.values(random, n);
                assertTrue(kernels().allFinite(Matrix.dense(in(memory, Tensor.convert(clean, dtype, n).data()), dtype, 1, n)),
                        dtype + " " + memory + " clean n=" + n);
                for (int at : new int[] {0, n / 2, n - 1}) {
                    for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
                        float[] v = clean.clone();
                        v[at] = bad;
                        Matrix m = Matrix.dense(in(memory, Tensor.convert(v, dtype, n).data()), dtype, 1, n);
                        assertFalse(kernels().allFinite(m), dtype + " " + memory + " " + bad + " at " + at + " of " + n);
                    }
                }
            }
        }
        // Strided: 300 rows of 1031 in rows of 1033.
        float[] wide = TestClients.values(new SplittableRandom(9), 300 * 1033);
        Matrix strided = new Matrix(MemorySegment.ofArray(wide), DType.F32, 0, 300, 1031, 1033);
        wide[1031] = Float.NaN; // outside the view
        assertTrue(kernels().allFinite(strided), "a NaN between the rows of a strided view");
        wide[299 * 1033 + 1030] = Float.POSITIVE_INFINITY; // the view's last element
        assertFalse(kernels().allFinite(strided), "infinity at the end of a strided view");
        // Strided: a NaN outside the view is not the view's business.
        float[] v = {1, 2, Float.NaN, 3, 4, Float.NaN};
        assertTrue(kernels().allFinite(new Matrix(MemorySegment.ofArray(v), DType.F32, 0, 2, 2, 3)));
        assertFalse(kernels().allFinite(new Matrix(MemorySegment.ofArray(v), DType.F32, 0, 2, 3, 3)));
    }

    @Test
    void loraNormMatchesScalarAndTheDenseProduct() {
        // Ranks below, at and above one and four vector widths, odd and even (the Gram blocks rows in pairs).
        int[][] cases = {{1, 1, 1}, {5, 13, 7}, {17, 61, 31}, {20, 768, 768}, {8, 1031, 257}, {64, 100, 37}, {70, 33, 129}};
        for (int[] c : cases) {
            int r = c[0], n = c[1], m = c[2];
            SplittableRandom random = new SplittableRandom(r * 7919L + n);
            float[] a = TestClients.values(random, r * n), b = TestClients.values(random, m * r);
            double got = kernels().loraNormSquared(Matrix.of(a, r, n), Matrix.of(b, m, r));
            double want = reference.loraNormSquared(Matrix.of(a, r, n), Matrix.of(b, m, r));
            double dense = Reference64.denseNormSquared(
                    Reference64.matrix(Tensor.of(a, r, n)), Reference64.matrix(Tensor.of(b, m, r)));
            assertEquals(dense, want, dense * 1e-9, "scalar vs dense, r=" + r);
            assertEquals(want, got, want * 1e-5, "backend vs scalar, r=" + r + " n=" + n + " m=" + m);
        }
    }

    @Test
    void growKeepsTheSumsAndMergeAddsThem() {
        SplittableRandom random = new SplittableRandom(3);
        Matrix x = source(random, DType.F32, 5, 11, 0);
        Matrix z = source(random, DType.F32, 9, 13, 0);
        Matrix y = source(random, DType.F32, 9, 19, 0);
        float[] want = new float[9 * 19], got = new float[9 * 19];
        // The reference is built at full size; the backend's grows from 5x11 to 9x13 (more rows and
        // columns, the same padded row) and then to 9x19 (a longer padded row: the sums move), and
        // the new cells must be zero each time. y comes in through a merge (sums added with weight 1).
        try (Accumulator r = reference.newAccumulator(9, 19); Accumulator k = kernels().newAccumulator(5, 11);
                Accumulator other = kernels().newAccumulator(9, 19)) {
            r.add(x, WEIGHTS[0]);
            r.add(z, WEIGHTS[1]);
            try (Accumulator ry = reference.newAccumulator(9, 19)) {
                ry.add(y, WEIGHTS[2]);
                r.add(ry);
            }
            k.add(x, WEIGHTS[0]);
            k.grow(9, 13);
            assertEquals(9, k.rows());
            assertEquals(13, k.cols());
            k.add(z, WEIGHTS[1]);
            k.grow(9, 19);
            assertEquals(19, k.cols());
            other.add(y, WEIGHTS[2]);
            k.add(other);
            float[] rowScale = scales(random, 9), colScale = scales(random, 19);
            r.finish(want, rowScale, colScale);
            k.finish(got, rowScale, colScale);
        }
        assertSameBits(want, got, "grow then merge");
    }
}
