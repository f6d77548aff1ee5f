package io.fedlora.bench;

import io.fedlora.ClientUpdate;
import io.fedlora.tensor.Tensor;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.Arrays;
import java.util.List;
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

/**
 * Where the fused path's time goes, one kernel call at a time on one module's factors: the
 * weighted sum over all A factors ({@code [r_k, in]}, long contiguous rows), over all B factors
 * ({@code [out, r_k]}, rows only r_k long), and the finite-value scan the facade runs on every
 * factor before summing. Not part of the grid; it explains the grid's numbers.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 5, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow",
        "--enable-native-access=ALL-UNNAMED", "-Xms2g", "-Xmx2g"})
public class KernelBench {

    @Param({"scalar", "vector"})
    public String backend;

    @Param({"llama-mlp"})
    public String shape;

    @Param({"16"})
    public int clients;

    @Param({"uniform"})
    public String mix;

    private Kernels kernels;
    private Matrix[] a, b;
    private float[] weights, ones, sumA, sumB;
    private int globalRank;
    private Workload.Module module;

    @Setup(Level.Trial)
    public void setUp() {
        kernels = Backends.create(backend, Backends.defaultThreads());
        module = Workload.modules(shape).get(0);
        List<ClientUpdate> updates = Workload.clients(shape, mix, clients);
        a = new Matrix[clients];
        b = new Matrix[clients];
        weights = new float[clients];
        for (int k = 0; k < clients; k++) {
            Tensor ta = updates.get(k).tensors().get(module.keyA()), tb = updates.get(k).tensors().get(module.keyB());
            a[k] = AggregateBench.matrix(ta);
            b[k] = AggregateBench.matrix(tb);
            weights[k] = (float) updates.get(k).weight();
            globalRank = Math.max(globalRank, a[k].rows());
        }
        ones = new float[globalRank];
        Arrays.fill(ones, 1f);
        sumA = new float[globalRank * module.in()];
        sumB = new float[module.out() * globalRank];
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        kernels.close();
    }

    @Benchmark
    public float[] sumA() {
        kernels.weightedSum(sumA, globalRank, module.in(), a, weights, ones, null);
        return sumA;
    }

    @Benchmark
    public float[] sumB() {
        kernels.weightedSum(sumB, module.out(), globalRank, b, weights, null, ones);
        return sumB;
    }

    @Benchmark
    public boolean finiteScan() {
        boolean ok = true;
        for (int k = 0; k < a.length; k++) {
            ok &= kernels.allFinite(a[k]) & kernels.allFinite(b[k]);
        }
        return ok;
    }

    /** Bytes read plus written per op: sums read their factors and write the global one; the scan reads all. */
    public static long bytesMoved(String method, String shape, String mix, int clients) {
        Workload.Module m = Workload.modules(shape).get(0);
        int[] ranks = Workload.ranks(mix, clients);
        long rankSum = 0;
        int globalRank = 0;
        for (int r : ranks) {
            rankSum += r;
            globalRank = Math.max(globalRank, r);
        }
        long elements = switch (method) {
            case "sumA" -> (rankSum + globalRank) * m.in();
            case "sumB" -> (rankSum + globalRank) * m.out();
            default -> rankSum * (m.in() + m.out());
        };
        return Float.BYTES * elements;
    }
}
