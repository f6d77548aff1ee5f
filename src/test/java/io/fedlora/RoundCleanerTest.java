package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestClients.Shape;
import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * Issue 13: a round that an engine drops without closing (a killed Spark task) must not hold its
 * accumulators (device memory on CUDA) for the life of the JVM; a closed round frees each exactly once.
 */
class RoundCleanerTest {

    static final List<Shape> SHAPES = List.of(new Shape("q", 19, 11), new Shape("v", 8, 30));

    /** The scalar backend, counting the accumulators that are open and those closed twice. */
    static final class CountingKernels implements Kernels {
        final Kernels inner = Backends.create("scalar", 1);
        final AtomicInteger open = new AtomicInteger();
        final AtomicInteger closedTwice = new AtomicInteger();

        final class Counted implements Accumulator {
            final Accumulator acc;
            boolean closed;

            Counted(Accumulator acc) {
                this.acc = acc;
                open.incrementAndGet();
            }

            @Override public int rows() { return acc.rows(); }
            @Override public int cols() { return acc.cols(); }
            @Override public void add(Matrix src, float weight) { acc.add(src, weight); }
            @Override public void add(Accumulator other) { acc.add(((Counted) other).acc); }
            @Override public void grow(int rows, int cols) { acc.grow(rows, cols); }
            @Override public void finish(float[] out, float[] rowScale, float[] colScale) { acc.finish(out, rowScale, colScale); }

            @Override
            public synchronized void close() {
                if (closed) {
                    closedTwice.incrementAndGet();
                    return;
                }
                closed = true;
                open.decrementAndGet();
                acc.close();
            }
        }

        @Override public String name() { return "scalar"; }
        @Override public String description() { return "counting " + inner.description(); }
        @Override public Accumulator newAccumulator(int rows, int cols) { return new Counted(inner.newAccumulator(rows, cols)); }
        @Override public int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights, float[] rowScale,
                float[] colScale) { return inner.weightedSum(out, rows, cols, sources, weights, rowScale, colScale); }
        @Override public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) { inner.pad(out, rows, cols, src, donor); }
        @Override public boolean allFinite(Matrix src) { return inner.allFinite(src); }
        @Override public double loraNormSquared(Matrix a, Matrix b) { return inner.loraNormSquared(a, b); }
    }

    /** A round with sums in it (ranks that grow, a merge, a partial merged in), returned without closing it. */
    static void fillAndDrop(Aggregator aggregator) {
        Round round = aggregator.newRound();
        TestClients.clients(new int[] {2, 5, 3, 8}, SHAPES, DType.BF16, 21).forEach(round::add);
        try (Round other = aggregator.newRound()) {
            TestClients.clients(new int[] {4, 1}, SHAPES, DType.F32, 22).forEach(other::add);
            round.merge(other);
            round.mergePartial(Partial.fromBytes(MemorySegment.ofArray(other.toPartial().toBytes())));
        }
        assertTrue(round.clientCount() == 8);
    }

    @Test
    void aRoundDroppedWithoutCloseFreesItsAccumulators() throws InterruptedException {
        CountingKernels kernels = new CountingKernels();
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.REPLICATION).kernels(kernels).build()) {
            fillAndDrop(aggregator);
            assertTrue(kernels.open.get() > 0, "the dropped round holds accumulators until it is collected");
            long deadline = System.nanoTime() + 20_000_000_000L;
            while (kernels.open.get() > 0 && System.nanoTime() < deadline) {
                System.gc();
                Thread.sleep(20);
            }
            assertEquals(0, kernels.open.get(), "accumulators of the dropped round still open");
            assertEquals(0, kernels.closedTwice.get());
        }
    }

    @Test
    void aClosedRoundFreesEachAccumulatorOnceAndTheCleanerAddsNothing() throws InterruptedException {
        CountingKernels kernels = new CountingKernels();
        try (Aggregator aggregator = Aggregator.builder().strategy(Strategy.NORM).allowMissing(true).kernels(kernels).build()) {
            Round round = aggregator.newRound();
            TestClients.clients(new int[] {3, 6, 2}, SHAPES, DType.F16, 23).forEach(round::add);
            round.finish();
            round.close();
            round.close();
            assertEquals(0, kernels.open.get());
            round = null;
            for (int i = 0; i < 5; i++) {
                System.gc();
                Thread.sleep(20);
            }
            assertEquals(0, kernels.closedTwice.get(), "close() and the cleaner both freed an accumulator");
        }
    }
}
