package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Every operation under several schedules of the emulator's streams (native/README.md): seed 0
 * runs ready work in submission order, odd seeds pick at random among the ready items, even
 * seeds let one stream race ahead of the other. Only the dependencies the backend declares
 * (events, stream order, the legacy stream's barrier) hold the order, so a missing
 * {@code cuStreamWaitEvent} in {@link StagingRing} gives wrong sums here (checked by hand: with
 * either wait deleted, this test and the contract suite fail under every seed).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaStreamOrderTest {
    private final CudaKernels cuda = new CudaKernels();
    private final ScalarKernels scalar = new ScalarKernels();

    @AfterAll
    void close() {
        Emulator.setSeed(1);
        cuda.close();
        scalar.close();
    }

    @ParameterizedTest
    @ValueSource(longs = {0, 1, 2, 3, 4, 5, 6, 7})
    void everyOperationMatchesTheScalarBackendUnderEverySchedule(long seed) {
        assumeTrue(Emulator.present(), "the schedule is the emulator's to choose");
        Emulator.setSeed(seed);
        SplittableRandom random = new SplittableRandom(seed);
        int rows = 13, cols = 61;
        DType[] dtypes = {DType.F32, DType.BF16, DType.F16, DType.F32, DType.BF16};
        Matrix[] sources = new Matrix[dtypes.length];
        float[] weights = new float[dtypes.length];
        for (int k = 0; k < sources.length; k++) {
            sources[k] = matrix(random, dtypes[k], rows - k, cols - 3 * k, cols);
            weights[k] = (float) (0.25 + random.nextDouble());
        }
        float[] rowScale = new float[rows], colScale = new float[cols];
        for (int i = 0; i < rows; i++) {
            rowScale[i] = 1f / (1 + i);
        }
        for (int j = 0; j < cols; j++) {
            colScale[j] = 0.5f + j % 3;
        }
        float[] want = new float[rows * cols], got = new float[rows * cols];
        assertEquals(-1, scalar.weightedSum(want, rows, cols, sources, weights, rowScale, colScale));
        assertEquals(-1, cuda.weightedSum(got, rows, cols, sources, weights, rowScale, colScale));
        assertArrayEquals(want, got, "weightedSum, seed " + seed);

        try (Accumulator a = cuda.newAccumulator(rows - 1, cols - 3); Accumulator b = cuda.newAccumulator(rows, cols)) {
            for (int k = 0; k < sources.length; k++) {
                Accumulator into = k % 2 == 0 ? b : a;
                if (k == 3) {
                    a.grow(rows, cols);
                }
                into.add(sources[k], weights[k]);
            }
            b.add(a);
            b.finish(got, rowScale, colScale);
        }
        try (Accumulator a = scalar.newAccumulator(rows, cols); Accumulator b = scalar.newAccumulator(rows, cols)) {
            for (int k = 0; k < sources.length; k++) {
                (k % 2 == 0 ? b : a).add(sources[k], weights[k]);
            }
            b.add(a);
            b.finish(want, rowScale, colScale);
        }
        assertArrayEquals(want, got, "accumulators, seed " + seed);

        float[] donor = new float[(rows + 2) * (cols + 5)];
        for (int i = 0; i < donor.length; i++) {
            donor[i] = i;
        }
        for (Matrix src : sources) {
            float[] padWant = new float[donor.length], padGot = new float[donor.length];
            scalar.pad(padWant, rows + 2, cols + 5, src, donor);
            cuda.pad(padGot, rows + 2, cols + 5, src, donor);
            assertArrayEquals(padWant, padGot, "pad, seed " + seed);
        }

        Matrix a = matrix(random, DType.BF16, 8, 300, 300), b = matrix(random, DType.F32, 200, 8, 8);
        double normWant = scalar.loraNormSquared(a, b), normGot = cuda.loraNormSquared(a, b);
        assertEquals(normWant, normGot, 1e-5 * normWant, "loraNormSquared, seed " + seed);
    }

    static Matrix matrix(SplittableRandom random, DType dtype, int rows, int cols, int stride) {
        float[] values = new float[rows * stride];
        for (int i = 0; i < values.length; i++) {
            values[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return new Matrix(Tensor.convert(values, dtype, rows, stride).data(), dtype, 0, rows, cols, stride);
    }
}
