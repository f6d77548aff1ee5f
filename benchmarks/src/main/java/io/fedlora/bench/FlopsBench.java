package io.fedlora.bench;

import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.VectorSpecies;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The machine's float64 FMA peak, the figure the product-space GFLOP/s are shown as a share of
 * (issue 11): on every core, {@value #CHAINS} independent chains of {@code acc = fma(acc, x, y)}
 * on the widest double vector, so that FMA latency is hidden and only throughput counts. Counted
 * as 2 flops per lane per FMA. Data stays in registers: this is the arithmetic ceiling, not a
 * memory figure (TriadBench is that).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 300, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 5, time = 300, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector"})
public class FlopsBench {

    static final VectorSpecies<Double> SPECIES = DoubleVector.SPECIES_PREFERRED;
    /** Independent accumulators per core: more than FMA latency x FMA ports (4 x 2 on current x86). */
    static final int CHAINS = 12;
    /** FMAs per chain per core per operation. */
    static final int STEPS = 1 << 20;

    private ForkJoinPool pool;
    private int cores;

    @Setup(Level.Trial)
    public void setUp() {
        cores = Runtime.getRuntime().availableProcessors();
        pool = new ForkJoinPool(cores);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        pool.shutdown();
    }

    @Benchmark
    public double fma() {
        return pool.submit(() -> IntStream.range(0, cores).parallel().mapToDouble(FlopsBench::chains).sum()).join();
    }

    /** One core's share; the result is returned so the JIT keeps every chain. */
    private static double chains(int core) {
        DoubleVector x = DoubleVector.broadcast(SPECIES, 0.999999), y = DoubleVector.broadcast(SPECIES, 1e-9 * (core + 1));
        DoubleVector a0 = DoubleVector.broadcast(SPECIES, 1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
        for (int i = 0; i < STEPS; i++) {
            a0 = a0.fma(x, y);
            a1 = a1.fma(x, y);
            a2 = a2.fma(x, y);
            a3 = a3.fma(x, y);
            a4 = a4.fma(x, y);
            a5 = a5.fma(x, y);
            a6 = a6.fma(x, y);
            a7 = a7.fma(x, y);
            a8 = a8.fma(x, y);
            a9 = a9.fma(x, y);
            a10 = a10.fma(x, y);
            a11 = a11.fma(x, y);
        }
        return a0.add(a1).add(a2).add(a3).add(a4).add(a5).add(a6).add(a7).add(a8).add(a9).add(a10).add(a11)
                .reduceLanes(jdk.incubator.vector.VectorOperators.ADD);
    }

    /** Floating-point operations of one {@link #fma} call on {@code cores} cores. */
    public static double flops(int cores) {
        return 2.0 * SPECIES.length() * CHAINS * (double) STEPS * cores;
    }
}
