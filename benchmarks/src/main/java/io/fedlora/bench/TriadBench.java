package io.fedlora.bench;

import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * A STREAM-style triad, {@code a[i] = b[i] + s * c[i]}, on every core, with arrays far larger than
 * any cache: the memory bandwidth the aggregation results are shown as a share of. Counted like
 * STREAM: 3 x 4 bytes per element (the write-allocate read of a is not counted).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 5, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow", "-Xmx2g"})
public class TriadBench {

    /** 32 Mi floats: 128 MiB per array, 384 MiB in all. */
    @Param({"33554432"})
    public int elements;

    private static final int CHUNK = 1 << 20;
    private static final float SCALAR = 3.0f;

    private float[] a, b, c;
    private ForkJoinPool pool;

    @Setup(Level.Trial)
    public void setUp() {
        a = new float[elements];
        b = new float[elements];
        c = new float[elements];
        java.util.Arrays.fill(a, 1f);
        java.util.Arrays.fill(b, 2f);
        java.util.Arrays.fill(c, 0.5f);
        pool = new ForkJoinPool(Runtime.getRuntime().availableProcessors());
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        pool.shutdown();
    }

    @Benchmark
    public float[] triad() {
        int chunks = (elements + CHUNK - 1) / CHUNK;
        pool.submit(() -> IntStream.range(0, chunks).parallel().forEach(this::chunk)).join();
        return a;
    }

    private void chunk(int index) {
        int from = index * CHUNK, to = Math.min(elements, from + CHUNK);
        for (int i = from; i < to; i++) {
            a[i] = b[i] + SCALAR * c[i];
        }
    }

    public static long bytesMoved(int elements) {
        return 3L * Float.BYTES * elements;
    }
}
