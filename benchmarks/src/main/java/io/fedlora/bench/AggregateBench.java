package io.fedlora.bench;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Round;
import io.fedlora.Strategy;
import io.fedlora.tensor.Tensor;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
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
 * One aggregation round, three ways: the fused batch kernel ({@link Aggregator#aggregate}), the
 * streaming round ({@link Round#add} then {@link Round#finish}), and "pad every client to the
 * global rank, then take the weighted mean", as research code does it. Each op aggregates every
 * module of the round; the trial setup checks that the three paths agree before timing them.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 5, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow", "--enable-native-access=ALL-UNNAMED", "-Xms4g", "-Xmx4g"})
public class AggregateBench {

    @Param({"zero", "replication", "norm"})
    public String strategy;

    /** cuda works too once that backend exists; under the device emulator its timings are not GPU timings. */
    @Param({"scalar", "vector"})
    public String backend;

    @Param({"distilbert", "llama-attn", "llama-mlp"})
    public String shape;

    @Param({"2", "10", "100"})
    public int clients;

    @Param({"uniform", "paper", "pow2"})
    public String mix;

    private Aggregator aggregator;
    private Kernels kernels;
    private List<ClientUpdate> updates;
    private List<Workload.Module> modules;

    @Setup(Level.Trial)
    public void setUp() {
        kernels = Backends.create(backend, Backends.defaultThreads());
        aggregator = Aggregator.builder().strategy(Strategy.parse(strategy)).kernels(kernels).build();
        if (!aggregator.backendName().equals(backend)) {
            throw new IllegalStateException("asked for backend " + backend + ", got " + aggregator.backendName());
        }
        modules = Workload.modules(shape);
        updates = Workload.clients(shape, mix, clients);
        // Correct first: the three paths must compute the same global adapter.
        Map<String, Tensor> reference = fused();
        Agreement.check("streaming", reference, streaming());
        Agreement.check("padThenAverage", reference, padThenAverage());
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        aggregator.close();
        kernels.close();
    }

    @Benchmark
    public Map<String, Tensor> fused() {
        return aggregator.aggregate(updates);
    }

    @Benchmark
    public Map<String, Tensor> streaming() {
        try (Round round = aggregator.newRound()) {
            for (ClientUpdate client : updates) {
                round.add(client);
            }
            return round.finish();
        }
    }

    @Benchmark
    public Map<String, Tensor> padThenAverage() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Workload.Module m : modules) {
            padThenAverage(m, out);
        }
        return out;
    }

    /**
     * Materialises every client at the global rank R with the library's explicit padding ops,
     * then averages the now equal-shaped factors with the same backend's weighted sum, so the
     * difference from {@link #fused} is the cost of the padding alone. ZERO and NORM zero-pad;
     * REPLICATION follows the paper's recipe literally: zero-pad, take the owner-weighted mean of
     * each component (the donor), pad every client again from that donor, then the plain mean.
     * NORM's weights ||B_k A_k||_F come from the same Gram-matrix kernel as the fused path, not
     * from forming B_k A_k, so that only the padding differs.
     */
    private void padThenAverage(Workload.Module m, Map<String, Tensor> out) {
        int k = updates.size();
        Tensor[] a = new Tensor[k], b = new Tensor[k];
        int globalRank = 0;
        for (int c = 0; c < k; c++) {
            a[c] = updates.get(c).tensors().get(m.keyA());
            b[c] = updates.get(c).tensors().get(m.keyB());
            globalRank = Math.max(globalRank, (int) a[c].dim(0));
        }
        float[] weights = new float[k];
        double[] ownerWeight = new double[globalRank];
        double total = 0;
        for (int c = 0; c < k; c++) {
            double w = strategy.equals("norm")
                    ? Math.sqrt(kernels.loraNormSquared(matrix(a[c]), matrix(b[c])))
                    : updates.get(c).weight();
            weights[c] = (float) w;
            total += weights[c];
            for (int i = 0; i < a[c].dim(0); i++) {
                ownerWeight[i] += weights[c];
            }
        }
        Matrix[] paddedA = new Matrix[k], paddedB = new Matrix[k];
        for (int c = 0; c < k; c++) {
            paddedA[c] = matrix(aggregator.padZero(a[c], Aggregator.Factor.A, globalRank));
            paddedB[c] = matrix(aggregator.padZero(b[c], Aggregator.Factor.B, globalRank));
        }
        if (strategy.equals("replication")) {
            float[] perComponent = new float[globalRank];
            for (int i = 0; i < globalRank; i++) {
                perComponent[i] = ownerWeight[i] > 0 ? (float) (1.0 / ownerWeight[i]) : 0f;
            }
            float[] donorA = new float[globalRank * m.in()];
            float[] donorB = new float[m.out() * globalRank];
            kernels.weightedSum(donorA, globalRank, m.in(), paddedA, weights, perComponent, null);
            kernels.weightedSum(donorB, m.out(), globalRank, paddedB, weights, null, perComponent);
            Tensor donorTensorA = Tensor.of(donorA, globalRank, m.in());
            Tensor donorTensorB = Tensor.of(donorB, m.out(), globalRank);
            for (int c = 0; c < k; c++) {
                paddedA[c] = matrix(aggregator.padReplicate(a[c], Aggregator.Factor.A, globalRank, donorTensorA));
                paddedB[c] = matrix(aggregator.padReplicate(b[c], Aggregator.Factor.B, globalRank, donorTensorB));
            }
        }
        float[] mean = new float[globalRank];
        Arrays.fill(mean, (float) (1.0 / total));
        float[] globalA = new float[globalRank * m.in()];
        float[] globalB = new float[m.out() * globalRank];
        kernels.weightedSum(globalA, globalRank, m.in(), paddedA, weights, mean, null);
        kernels.weightedSum(globalB, m.out(), globalRank, paddedB, weights, null, mean);
        out.put(m.keyA(), Tensor.of(globalA, globalRank, m.in()));
        out.put(m.keyB(), Tensor.of(globalB, m.out(), globalRank));
    }

    static Matrix matrix(Tensor t) {
        return Matrix.dense(t.data(), t.dtype(), (int) t.dim(0), (int) t.dim(1));
    }
}
