package io.fedlora.bench;

import io.fedlora.Aggregator;
import io.fedlora.tensor.Tensor;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
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
import org.openjdk.jmh.infra.Blackhole;

/**
 * The explicit padding ops alone: one client's A and B of rank {@code rank} padded to
 * {@code globalRank}, against copying the same number of output bytes with System.arraycopy
 * (single-threaded, into a fresh array as the pads do), which is what a pad can at best cost.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 2, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 5, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow", "--enable-native-access=ALL-UNNAMED", "-Xms2g", "-Xmx2g"})
public class PadBench {

    @Param({"scalar", "vector"})
    public String backend;

    /** A single-module shape (distilbert, llama-attn or llama-mlp). */
    @Param({"distilbert", "llama-mlp"})
    public String shape;

    @Param({"8"})
    public int rank;

    @Param({"64"})
    public int globalRank;

    private Aggregator aggregator;
    private Tensor a, b, donorA, donorB;
    private float[] paddedSizeA, paddedSizeB;

    @Setup(Level.Trial)
    public void setUp() {
        aggregator = Aggregator.builder().backend(backend).build();
        Workload.Module m = Workload.modules(shape).get(0);
        SplittableRandom random = new SplittableRandom(Workload.SEED);
        a = Tensor.of(Workload.values(random, rank * m.in()), rank, m.in());
        b = Tensor.of(Workload.values(random, m.out() * rank), m.out(), rank);
        paddedSizeA = Workload.values(random, globalRank * m.in());
        paddedSizeB = Workload.values(random, m.out() * globalRank);
        donorA = Tensor.of(paddedSizeA, globalRank, m.in());
        donorB = Tensor.of(paddedSizeB, m.out(), globalRank);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        aggregator.close();
    }

    @Benchmark
    public void padZero(Blackhole bh) {
        bh.consume(aggregator.padZero(a, Aggregator.Factor.A, globalRank));
        bh.consume(aggregator.padZero(b, Aggregator.Factor.B, globalRank));
    }

    @Benchmark
    public void padReplicate(Blackhole bh) {
        bh.consume(aggregator.padReplicate(a, Aggregator.Factor.A, globalRank, donorA));
        bh.consume(aggregator.padReplicate(b, Aggregator.Factor.B, globalRank, donorB));
    }

    @Benchmark
    public void arraycopy(Blackhole bh) {
        float[] outA = new float[paddedSizeA.length];
        System.arraycopy(paddedSizeA, 0, outA, 0, outA.length);
        bh.consume(outA);
        float[] outB = new float[paddedSizeB.length];
        System.arraycopy(paddedSizeB, 0, outB, 0, outB.length);
        bh.consume(outB);
    }

    /** Bytes read plus written per op, float32; arraycopy reads and writes the padded size. */
    public static long bytesMoved(String method, String shape, int rank, int globalRank) {
        Workload.Module m = Workload.modules(shape).get(0);
        long padded = (long) globalRank * (m.in() + m.out()), own = (long) rank * (m.in() + m.out());
        long elements = switch (method) {
            case "padZero" -> own + padded;
            case "padReplicate" -> own + (padded - own) + padded; // own part, donor's rest, output
            default -> 2 * padded;
        };
        return Float.BYTES * elements;
    }
}
