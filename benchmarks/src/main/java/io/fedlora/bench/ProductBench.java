package io.fedlora.bench;

import io.fedlora.product.FidelityReport;
import io.fedlora.product.Fill;
import io.fedlora.product.Grams;
import io.fedlora.product.LowRank;
import io.fedlora.product.ModuleFactors;
import io.fedlora.product.ProductSpace;
import io.fedlora.product.Split;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import org.ejml.data.DMatrixRMaj;
import org.ejml.dense.row.CommonOps_MT_DDRM;
import org.ejml.dense.row.factory.DecompositionFactory_MT_DDRM;
import org.ejml.interfaces.decomposition.SingularValueDecomposition_F64;
import java.util.List;
import java.util.Random;
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
 * Product-space aggregation of one module (issue 11, DESIGN §9): the float64 Gram matrices of the
 * clients' stacks, the Gram-route SVD at R = max r_k (Grams included), and the fidelity report of
 * ZERO, REPLICATION, NORM, STACK and SVD (Grams included). Ranks drawn uniformly from 8..64
 * (seeded), as in the issue. GFLOP per operation: Grams {@code (m + n) S^2}, SVD adds
 * {@code 2 (m + n) S R + ~46 S^3}. The dense alternative (form the m x n average, then a dense SVD)
 * costs 2.5 TFLOP at 11008 x 4096 whatever K (PRODUCT_SPACE.md T5).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 1, time = 1, timeUnit = TimeUnit.SECONDS)
@Measurement(iterations = 3, time = 1, timeUnit = TimeUnit.SECONDS)
@Fork(value = 1, jvmArgsAppend = {"--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow",
        "--enable-native-access=ALL-UNNAMED", "-Xms4g", "-Xmx4g"})
public class ProductBench {

    /** Gram kernels: "scalar" (reference loops) or "vector" (register-blocked, Vector API). */
    @Param({"vector"})
    public String backend;

    /** distilbert 768 x 768, llama-attn 4096 x 4096, llama-mlp 11008 x 4096. */
    @Param({"llama-attn", "llama-mlp"})
    public String shape;

    @Param({"16"})
    public int clients;

    private ProductSpace space;
    private List<ModuleFactors> factors;
    private Grams grams;
    private int rank;
    /** The factors in float64, for the dense alternative (widened once, outside the timing). */
    private List<DMatrixRMaj> denseA, denseB;

    @Setup(Level.Trial)
    public void setUp() {
        int m = rows(shape), n = cols(shape);
        int[] ranks = ranks(clients);
        Random rnd = new Random(12);
        factors = new ArrayList<>();
        denseA = new ArrayList<>();
        denseB = new ArrayList<>();
        for (int k = 0; k < clients; k++) {
            int r = ranks[k];
            rank = Math.max(rank, r);
            float[] a = new float[r * n], b = new float[m * r];
            for (int i = 0; i < a.length; i++) {
                a[i] = (float) (0.01 * rnd.nextGaussian());
            }
            for (int i = 0; i < b.length; i++) {
                b[i] = (float) (0.001 * rnd.nextGaussian());
            }
            factors.add(ModuleFactors.of("c" + k, Matrix.of(a, r, n), Matrix.of(b, m, r), 1 + rnd.nextInt(100)));
            denseA.add(widen(a, r, n));
            denseB.add(widen(b, m, r));
        }
        space = new ProductSpace(ProductSpace.gramKernelsFor(backend), Runtime.getRuntime().availableProcessors());
        grams = space.grams("bench", factors);
    }

    private static DMatrixRMaj widen(float[] x, int rows, int cols) {
        DMatrixRMaj d = new DMatrixRMaj(rows, cols);
        for (int i = 0; i < x.length; i++) {
            d.data[i] = x[i];
        }
        return d;
    }

    static int rows(String shape) {
        return switch (shape) {
            case "distilbert" -> 768;
            case "llama-attn" -> 4096;
            case "llama-mlp" -> 11008;
            default -> throw new IllegalArgumentException("unknown shape " + shape);
        };
    }

    static int cols(String shape) {
        return "distilbert".equals(shape) ? 768 : 4096;
    }

    /** The clients' ranks, uniform in 8..64, seeded: the same for every shape and method. */
    static int[] ranks(int clients) {
        Random rnd = new Random(11);
        int[] ranks = new int[clients];
        for (int k = 0; k < clients; k++) {
            ranks[k] = 8 + rnd.nextInt(57);
        }
        return ranks;
    }

    /**
     * The Gram matrices' floating-point operations, {@code (m + n) S^2} (two symmetric rank-S
     * updates, upper triangles: {@code rows x S (S + 1)} multiply-adds each): the part of every
     * method here that grows with the data. The SVD adds {@code 2 (m + n) S R} for the output
     * products and an {@code O(S^3)} core; only the Grams are counted, so GFLOP/s of svd and
     * fidelity understate their arithmetic rate.
     */
    static double gramFlops(String shape, int clients) {
        return flops("grams", shape, clients);
    }

    /**
     * The flops a method is credited with: the Grams' for grams, svd and fidelity; none for
     * svdAfterGrams (it starts from the Grams); for denseAlternative the {@code m x n} products,
     * {@code 2 m n S}, and the thin R-SVD, {@code 6 m n^2 + 20 n^3} for {@code m >= n} (Golub and
     * Van Loan), a floor for any dense route.
     */
    static double flops(String method, String shape, int clients) {
        long s = 0;
        for (int r : ranks(clients)) {
            s += r;
        }
        double m = rows(shape), n = cols(shape), big = Math.max(m, n), small = Math.min(m, n);
        return switch (method) {
            case "svdAfterGrams" -> Double.NaN;
            case "denseAlternative" -> 2 * m * n * s + 6 * big * small * small + 20 * small * small * small;
            default -> (m + n) * s * (s + 1);
        };
    }

    /** Bytes of factor data read: the clients' float32 A and B, once. */
    static long factorBytes(String shape, int clients) {
        long s = 0;
        for (int r : ranks(clients)) {
            s += r;
        }
        return 4L * (rows(shape) + cols(shape)) * s;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        space.close();
    }

    @Benchmark
    public Grams grams() {
        return space.grams("bench", factors);
    }

    @Benchmark
    public LowRank svd() {
        return space.svd("bench", factors, rank, Split.FLEXLORA, 1.0, Fill.ORTH);
    }

    /** The S x S part and the output products alone, on precomputed Grams. */
    @Benchmark
    public LowRank svdAfterGrams() {
        return space.svd(grams, factors, rank, Split.FLEXLORA, 1.0, Fill.ORTH);
    }

    /**
     * The dense alternative the product-space route avoids, with the same library (EJML, float64,
     * multithreaded): form the {@code m x n} weighted average {@code sum_k w_k B_k A_k} (one GEMM per
     * client), then its thin SVD with both factors, as FlexLoRA and PEFT's {@code svd} merge do.
     */
    @Benchmark
    public double[] denseAlternative() {
        int m = rows(shape), n = cols(shape);
        double total = 0;
        for (ModuleFactors f : factors) {
            total += f.weight();
        }
        DMatrixRMaj average = new DMatrixRMaj(m, n);
        for (int k = 0; k < factors.size(); k++) {
            CommonOps_MT_DDRM.multAdd(factors.get(k).weight() / total, denseB.get(k), denseA.get(k), average);
        }
        SingularValueDecomposition_F64<DMatrixRMaj> svd = DecompositionFactory_MT_DDRM.svd(m, n, true, true, true);
        if (!svd.decompose(average)) {
            throw new IllegalStateException("dense SVD did not converge");
        }
        return svd.getSingularValues();
    }

    @Benchmark
    public FidelityReport fidelity() {
        return FidelityReport.compute(space, List.of(new FidelityReport.ModuleInput("bench", factors, 0)),
                FidelityReport.STRATEGIES);
    }
}
