package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The device lock is held only around device state (CudaKernels' class comment): one thread
 * stopped inside its packing step does not stop another thread's operations, and operations of
 * several threads at once give the vector backend's results bit for bit under every schedule of
 * the emulator's streams. Checked by hand: with the packing moved under the device lock (the
 * session's monitor taken around {@code packInto}), the first test fails (the second thread
 * times out).
 */
class CudaConcurrencyTest {
    private static final long TIMEOUT_S = 30;

    @Test
    void anOperationStoppedWhilePackingDoesNotStopAnotherThreadsOperations() throws Exception {
        SplittableRandom random = new SplittableRandom(8);
        Matrix held = CudaStreamOrderTest.matrix(random, DType.F32, 12, 70, 70);
        Matrix other = CudaStreamOrderTest.matrix(random, DType.BF16, 12, 70, 70);
        ExecutorService threads = Executors.newFixedThreadPool(2);
        CountDownLatch packing = new CountDownLatch(1), release = new CountDownLatch(1);
        try (CudaKernels cuda = new CudaKernels(2); Kernels vector = Backends.create("vector", 2);
                Accumulator first = cuda.newAccumulator(12, 70); Accumulator second = cuda.newAccumulator(12, 70)) {
            try {
                cuda.packHook(m -> {
                    if (m == held) {
                        packing.countDown();
                        try {
                            release.await(TIMEOUT_S, TimeUnit.SECONDS);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                    }
                });
                Future<?> stopped = threads.submit(() -> first.add(held, 0.75f));
                assertTrue(packing.await(TIMEOUT_S, TimeUnit.SECONDS), "the first add never reached its packing step");
                // While the first thread sits in its packing step, holding a staging slot: a whole add,
                // finish, weightedSum and pad on another thread.
                float[] sums = new float[12 * 70], weighted = new float[12 * 70], padded = new float[14 * 75];
                Future<?> meanwhile = threads.submit(() -> {
                    second.add(other, 1.25f);
                    second.finish(sums, null, null);
                    assertEquals(-1, cuda.weightedSum(weighted, 12, 70, new Matrix[] {other}, new float[] {2f}, null, null));
                    cuda.pad(padded, 14, 75, other, null);
                });
                meanwhile.get(TIMEOUT_S, TimeUnit.SECONDS); // times out if packing held the device lock
                assertFalse(stopped.isDone(), "the first add finished while its packing was held");
                release.countDown();
                stopped.get(TIMEOUT_S, TimeUnit.SECONDS);
                cuda.packHook(null);

                float[] want = new float[12 * 70];
                vector.weightedSum(want, 12, 70, new Matrix[] {other}, new float[] {1.25f}, null, null);
                assertArrayEquals(want, sums, "the second accumulator");
                vector.weightedSum(want, 12, 70, new Matrix[] {other}, new float[] {2f}, null, null);
                assertArrayEquals(want, weighted, "weightedSum");
                float[] padWant = new float[padded.length];
                vector.pad(padWant, 14, 75, other, null);
                assertArrayEquals(padWant, padded, "pad");
                float[] got = new float[12 * 70];
                first.finish(got, null, null);
                vector.weightedSum(want, 12, 70, new Matrix[] {held}, new float[] {0.75f}, null, null);
                assertArrayEquals(want, got, "the first accumulator, once released");
            } finally {
                release.countDown(); // before the backend closes: close waits for the held packing step
            }
        } finally {
            threads.shutdownNow();
        }
    }

    /** Packing runs without the device lock, so close must wait for it, never free the pinned slot under it. */
    @Test
    void closeWaitsForAnOperationThatIsPacking() throws Exception {
        Matrix held = CudaStreamOrderTest.matrix(new SplittableRandom(9), DType.F16, 9, 40, 40);
        ExecutorService threads = Executors.newFixedThreadPool(2);
        CountDownLatch packing = new CountDownLatch(1), release = new CountDownLatch(1);
        try {
            CudaKernels cuda = new CudaKernels(2);
            Accumulator acc = cuda.newAccumulator(9, 40);
            cuda.packHook(m -> {
                packing.countDown();
                try {
                    release.await(TIMEOUT_S, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            Future<?> adding = threads.submit(() -> acc.add(held, 1f));
            assertTrue(packing.await(TIMEOUT_S, TimeUnit.SECONDS), "the add never reached its packing step");
            Future<?> closing = threads.submit(cuda::close);
            Thread.sleep(300);
            assertFalse(closing.isDone(), "close finished while an operation was packing into a staging slot");
            release.countDown();
            adding.get(TIMEOUT_S, TimeUnit.SECONDS); // the add completes: its slot was still there
            closing.get(TIMEOUT_S, TimeUnit.SECONDS);
            IllegalStateException after = org.junit.jupiter.api.Assertions.assertThrows(IllegalStateException.class,
                    () -> cuda.weightedSum(new float[1], 1, 1, new Matrix[] {held}, new float[] {1f}, null, null));
            assertTrue(after.getMessage().contains("closed"), after.getMessage());
        } finally {
            release.countDown();
            threads.shutdownNow();
        }
    }

    /** Four threads, each with its own accumulators, sums and pads, started together; every result as the vector backend's. */
    @ParameterizedTest
    @ValueSource(longs = {0, 1, 2, 3, 4, 5})
    void operationsOfSeveralThreadsMatchTheVectorBackendUnderEverySchedule(long seed) throws Exception {
        assumeTrue(Emulator.present(), "the schedule is the emulator's to choose");
        Emulator.setSeed(seed);
        int threadCount = 4, rows = 11, cols = 53;
        DType[] dtypes = {DType.F32, DType.BF16, DType.F16};
        ExecutorService threads = Executors.newFixedThreadPool(threadCount);
        CyclicBarrier start = new CyclicBarrier(threadCount);
        try (CudaKernels cuda = new CudaKernels(2); Kernels vector = Backends.create("vector", 2)) {
            List<Future<Void>> done = new ArrayList<>();
            for (int t = 0; t < threadCount; t++) {
                SplittableRandom random = new SplittableRandom(seed * 100 + t);
                Matrix[] sources = new Matrix[5];
                float[] weights = new float[sources.length];
                for (int k = 0; k < sources.length; k++) {
                    sources[k] = CudaStreamOrderTest.matrix(random, dtypes[(k + t) % 3], rows - k, cols - 2 * k, cols);
                    weights[k] = (float) (0.25 + random.nextDouble());
                }
                float[] rowScale = new float[rows];
                for (int i = 0; i < rows; i++) {
                    rowScale[i] = 1f / (1 + i + t);
                }
                int thread = t;
                done.add(threads.submit(() -> {
                    start.await(TIMEOUT_S, TimeUnit.SECONDS);
                    for (int repeat = 0; repeat < 3; repeat++) {
                        float[] want = new float[rows * cols], got = new float[rows * cols];
                        // Source 1 (rows - 1 x cols - 2) first, into an accumulator of its size, grown for the rest.
                        int[] order = {1, 0, 2, 3, 4};
                        Matrix[] ordered = new Matrix[order.length];
                        float[] orderedWeights = new float[order.length];
                        try (Accumulator acc = cuda.newAccumulator(rows - 1, cols - 2)) {
                            for (int i = 0; i < order.length; i++) {
                                if (i == 1) {
                                    acc.grow(rows, cols);
                                }
                                ordered[i] = sources[order[i]];
                                orderedWeights[i] = weights[order[i]];
                                acc.add(ordered[i], orderedWeights[i]);
                            }
                            acc.finish(got, rowScale, null);
                        }
                        vector.weightedSum(want, rows, cols, ordered, orderedWeights, rowScale, null);
                        assertArrayEquals(want, got, "thread " + thread + " accumulator, seed " + seed);
                        vector.weightedSum(want, rows, cols, sources, weights, rowScale, null);
                        assertEquals(-1, cuda.weightedSum(got, rows, cols, sources, weights, rowScale, null));
                        assertArrayEquals(want, got, "thread " + thread + " weightedSum, seed " + seed);
                        float[] donor = new float[(rows + 1) * (cols + 3)];
                        java.util.Arrays.fill(donor, thread + 0.5f);
                        float[] padWant = new float[donor.length], padGot = new float[donor.length];
                        vector.pad(padWant, rows + 1, cols + 3, sources[thread % sources.length], donor);
                        cuda.pad(padGot, rows + 1, cols + 3, sources[thread % sources.length], donor);
                        assertArrayEquals(padWant, padGot, "thread " + thread + " pad, seed " + seed);
                    }
                    return null;
                }));
            }
            for (Future<Void> f : done) {
                f.get(TIMEOUT_S * 2, TimeUnit.SECONDS);
            }
        } finally {
            threads.shutdownNow();
            Emulator.setSeed(1);
        }
    }
}
