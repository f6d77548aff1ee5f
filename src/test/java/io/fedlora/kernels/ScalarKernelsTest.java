package io.fedlora.kernels;

import io.fedlora.tensor.Matrix;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import io.fedlora.TestClients;
import io.fedlora.kernels.cpu.ScalarKernels;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;

/**
 * The reference itself, against hand-computed values and float64; plus the contract run on a
 * three-thread scalar backend, which must equal the one-thread reference.
 */
class ScalarKernelsTest extends KernelsContractTest {
    private final ScalarKernels threaded = new ScalarKernels(3);
    private final ScalarKernels single = new ScalarKernels();

    @Override
    protected Kernels kernels() {
        return threaded;
    }

    @AfterAll
    void close() {
        threaded.close();
        single.close();
    }

    @Test
    void accumulateAndFinishByHand() {
        // sums = 2 * [1 2; 3 4] + 0.5 * [10 20] (a one-row source), then rows scaled by 1/4 and 1/2.
        float[] out = new float[4];
        try (Accumulator acc = single.newAccumulator(2, 2)) {
            acc.add(Matrix.of(new float[] {1, 2, 3, 4}, 2, 2), 2f);
            acc.add(Matrix.of(new float[] {10, 20}, 1, 2), 0.5f);
            acc.finish(out, new float[] {0.25f, 0.5f}, null);
        }
        assertArrayEquals(new float[] {(2 + 5) / 4f, (4 + 10) / 4f, 6 / 2f, 8 / 2f}, out);
    }

    @Test
    void columnScaleAndStridedSourceByHand() {
        // B-like: a [2, 1] column taken from a [2, 3] buffer (stride 3) into [2, 2] sums.
        float[] buffer = {1, 9, 9, 2, 9, 9};
        float[] out = new float[4];
        int bad = single.weightedSum(out, 2, 2, new Matrix[] {
            new Matrix(java.lang.foreign.MemorySegment.ofArray(buffer), DType.F32, 0, 2, 1, 3),
            Matrix.of(new float[] {4, 8, 6, 10}, 2, 2)}, new float[] {3, 1}, null, new float[] {0.25f, 0.5f});
        assertEquals(-1, bad);
        assertArrayEquals(new float[] {(3 + 4) * 0.25f, 8 * 0.5f, (6 + 6) * 0.25f, 10 * 0.5f}, out);
    }

    @Test
    void padByHand() {
        float[] a = {1, 2, 3};
        float[] zero = new float[6];
        single.pad(zero, 2, 3, Matrix.of(a, 1, 3), null);
        assertArrayEquals(new float[] {1, 2, 3, 0, 0, 0}, zero);
        float[] donor = {7, 7, 7, 8, 8, 8};
        float[] replicated = new float[6];
        single.pad(replicated, 2, 3, Matrix.of(a, 1, 3), donor);
        assertArrayEquals(new float[] {1, 2, 3, 8, 8, 8}, replicated);
        float[] b = {1, 2, 3, 4}; // [2, 2] -> B-like pad to [2, 3]
        float[] wide = new float[6];
        single.pad(wide, 2, 3, Matrix.of(b, 2, 2), donor);
        assertArrayEquals(new float[] {1, 2, 7, 3, 4, 8}, wide);
    }

    @Test
    void bf16AndF16AreConvertedOnLoad() {
        float[] values = {1.5f, -2.25f, 65504f, 6.1035156e-5f, 5.9604645e-8f};
        for (DType dtype : new DType[] {DType.BF16, DType.F16}) {
            Tensor t = Tensor.convert(values, dtype, 1, values.length);
            float[] out = new float[values.length];
            single.pad(out, 1, values.length, Matrix.dense(t.data(), dtype, 1, values.length), null);
            for (int i = 0; i < values.length; i++) {
                assertEquals(t.get(i), out[i], 0f, dtype + " element " + i);
            }
        }
        // Exactly representable in both: converted exactly.
        assertEquals(-2.25f, DType.F16.get(Tensor.convert(values, DType.F16, 5).data(), 1));
        assertEquals(1.5f, DType.BF16.get(Tensor.convert(values, DType.BF16, 5).data(), 0));
    }

    @Test
    void bf16RoundsToNearestEven() {
        // 1 + 2^-8 is exactly half-way between bf16 neighbours 1 and 1 + 2^-7: ties go to the even 1.
        assertEquals(1f, DType.bf16ToFloat(DType.floatToBf16(1f + 0x1p-8f)));
        // 1 + 3 * 2^-8 is half-way between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
        assertEquals(1f + 0x1p-6f, DType.bf16ToFloat(DType.floatToBf16(1f + 3 * 0x1p-8f)));
        assertEquals(1f + 0x1p-7f, DType.bf16ToFloat(DType.floatToBf16(1f + 0x1p-8f + 0x1p-20f)));
        assertEquals(Float.POSITIVE_INFINITY, DType.bf16ToFloat(DType.floatToBf16(Float.POSITIVE_INFINITY)));
        assertEquals(true, Float.isNaN(DType.bf16ToFloat(DType.floatToBf16(Float.NaN))));
    }

    @Test
    void weightedSumOfManyClientsMatchesFloat64() {
        // K = 1000 random clients summed in float32 with FMA against a float64 sum: within 1e-5.
        int k = 1000, n = 257;
        SplittableRandom random = new SplittableRandom(11);
        Matrix[] sources = new Matrix[k];
        float[] weights = new float[k];
        double[] want = new double[n];
        double total = 0;
        for (int c = 0; c < k; c++) {
            float[] v = TestClients.values(random, n);
            sources[c] = Matrix.of(v, 1, n);
            weights[c] = 1 + random.nextInt(100);
            total += weights[c];
            for (int j = 0; j < n; j++) {
                want[j] += (double) weights[c] * v[j];
            }
        }
        float[] out = new float[n];
        single.weightedSum(out, 1, n, sources, weights, new float[] {(float) (1 / total)}, null);
        double maxDiff = 0, maxRef = 0;
        for (int j = 0; j < n; j++) {
            maxDiff = Math.max(maxDiff, Math.abs(out[j] - want[j] / total));
            maxRef = Math.max(maxRef, Math.abs(want[j] / total));
        }
        assertEquals(0, maxDiff / maxRef, 1e-5);
    }

    @Test
    void threadCountDoesNotChangeResults() {
        SplittableRandom random = new SplittableRandom(5);
        int rows = 300, cols = 1031; // 309300 elements: split across threads
        Matrix[] sources = {source(random, DType.F32, rows, cols, 0), source(random, DType.BF16, rows - 7, cols, 0)};
        float[] one = new float[rows * cols], three = new float[rows * cols];
        single.weightedSum(one, rows, cols, sources, new float[] {1.5f, 2f}, null, null);
        threaded.weightedSum(three, rows, cols, sources, new float[] {1.5f, 2f}, null, null);
        assertArrayEquals(one, three);
    }
}
