package io.fedlora.product;

import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;
import java.util.stream.IntStream;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * Not a test: the measurement of SVD and fidelity on Llama-shaped modules, with the
 * machine's float64 FMA peak measured in the same process. Timings on a shared machine are noisy.
 *
 * <p>{@code java -cp ... io.fedlora.product.ProductSpaceMeasure [clients=16] [shape=llama-attn|llama-mlp] [svd=true] [threads=N] [kernels=vector]}
 */
public final class ProductSpaceMeasure {
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;

    /** CPU seconds of this process: on a shared machine, flops per CPU-second is the stable efficiency figure. */
    static double cpu() {
        return ProcessHandle.current().info().totalCpuDuration().orElseThrow().toNanos() / 1e9;
    }

    public static void main(String[] args) {
        int clients = 16, threads = Runtime.getRuntime().availableProcessors();
        String shape = "llama-mlp", kernels = "vector";
        boolean svd = true, fidelity = true;
        for (String a : args) {
            String[] kv = a.split("=", 2);
            switch (kv[0]) {
                case "clients" -> clients = Integer.parseInt(kv[1]);
                case "shape" -> shape = kv[1];
                case "svd" -> svd = Boolean.parseBoolean(kv[1]);
                case "fidelity" -> fidelity = Boolean.parseBoolean(kv[1]);
                case "threads" -> threads = Integer.parseInt(kv[1]);
                case "kernels" -> kernels = kv[1];
                default -> throw new IllegalArgumentException("unknown argument " + a);
            }
        }
        int m = shape.equals("llama-attn") ? 4096 : 11008, n = 4096;
        // Warm-up calls first: one long call leaves the loop to on-stack replacement, which ran it
        // at a twentieth of the compiled rate here.
        for (int i = 0; i < 300; i++) {
            chains(100_000);
        }
        double c0 = cpu();
        double wall1 = peak(1);
        double perCpu = 2.0 * 12 * D.length() * 50_000_000L * 3 / (cpu() - c0) / 1e9;
        System.out.printf(Locale.ROOT, "peak float64 FMA (%d-bit vectors): 1 thread %.1f GFLOP/s wall (best of 3), "
                + "%.1f GFLOP per CPU-second; %d threads %.1f GFLOP/s wall%n", D.vectorBitSize(), wall1, perCpu, threads,
                peak(threads));
        Random rnd = new Random(42);
        int[] ranks = new int[clients];
        List<ModuleFactors> list = new ArrayList<>();
        for (int k = 0; k < clients; k++) {
            ranks[k] = 8 + rnd.nextInt(57);
            float[] a = new float[ranks[k] * n], b = new float[m * ranks[k]];
            for (int i = 0; i < a.length; i++) {
                a[i] = (float) (0.01 * rnd.nextGaussian());
            }
            for (int i = 0; i < b.length; i++) {
                b[i] = (float) (0.001 * rnd.nextGaussian());
            }
            list.add(ModuleFactors.of("c" + k, Matrix.of(a, ranks[k], n), Matrix.of(b, m, ranks[k]), 1 + rnd.nextInt(100)));
        }
        int s = IntStream.of(ranks).sum(), rank = IntStream.of(ranks).max().orElse(0);
        System.out.printf(Locale.ROOT, "%s %d x %d, K = %d, ranks 8..64 (S = %d, R = %d), %s Gram kernels, %d threads%n",
                shape, m, n, clients, s, rank, kernels, threads);
        GramKernels g = "scalar".equals(kernels) ? new ScalarGram() : new VectorGram();
        try (ProductSpace ps = new ProductSpace(g, threads)) {
            // Warm-up on a small problem so the JIT has compiled the kernels.
            List<ModuleFactors> small = list.subList(0, Math.min(4, clients));
            for (int i = 0; i < 3; i++) {
                ps.svd(ps.grams("warm", small), small, 8, Split.FLEXLORA, 1, Fill.ORTH);
            }
            for (int rep = 0; rep < 2; rep++) {
                resetPeaks();
                long t0 = System.nanoTime();
                double cpu0 = cpu();
                Grams grams = ps.grams("module", list);
                long t1 = System.nanoTime();
                double cpu1 = cpu();
                double gramFlops = (double) (m + n) * s * s;   // LAPACK SYRK convention, both halves counted once
                System.out.printf(Locale.ROOT, "  Gram matrices: %.3f s, %.1f GFLOP, %.1f GFLOP/s wall, %.1f GFLOP per CPU-second%n",
                        (t1 - t0) / 1e9, gramFlops / 1e9, gramFlops / ((t1 - t0) / 1e9) / 1e9, gramFlops / (cpu1 - cpu0) / 1e9);
                if (svd) {
                    long t2 = System.nanoTime();
                    double cpu2 = cpu();
                    LowRank out = ps.svd(grams, list, rank, Split.FLEXLORA, 1, Fill.ORTH);
                    long t3 = System.nanoTime();
                    double cpu3 = cpu();
                    double outFlops = 2.0 * (m + n) * s * out.numericalRank();
                    // Two pivoted Cholesky (2/3 S^3), the core product (2 S^3), GESDD (26 S^3), LAPACK constants.
                    double small3 = (2.0 / 3 + 2 + 26) * s * s * (double) s;
                    System.out.printf(Locale.ROOT, "  SVD after the Grams (route %s, rank kept %d): %.3f s "
                            + "(output GEMMs %.1f GFLOP, S x S work ~%.1f GFLOP at LAPACK constants)%n",
                            out.route(), out.numericalRank(), (t3 - t2) / 1e9, outFlops / 1e9, small3 / 1e9);
                    System.out.printf(Locale.ROOT, "  SVD total %.3f s, %.1f GFLOP -> %.1f GFLOP/s wall; after the Grams "
                            + "%.1f CPU-seconds (%.1f GFLOP per CPU-second)%n", (t3 - t0) / 1e9,
                            (gramFlops + outFlops + small3) / 1e9, (gramFlops + outFlops + small3) / ((t3 - t0) / 1e9) / 1e9,
                            cpu3 - cpu2, (outFlops + small3) / (cpu3 - cpu2) / 1e9);
                }
                if (fidelity) {
                    long t4 = System.nanoTime();
                    double cpu4 = cpu();
                    List<String> strategies = svd ? FidelityReport.STRATEGIES : List.of("zero", "replication", "norm", "stack");
                    FidelityReport report = FidelityReport.compute(ps,
                            List.of(new FidelityReport.ModuleInput("module", list, 0)), strategies);
                    long t5 = System.nanoTime();
                    System.out.printf(Locale.ROOT, "  fidelity report (%s, Grams included): %.3f s, %.1f CPU-seconds%n",
                            strategies, (t5 - t4) / 1e9, cpu() - cpu4);
                    for (FidelityReport.Row r : report.overall()) {
                        System.out.printf(Locale.ROOT, "    %-12s e vs dW* %.4f  vs dW_ra %.4f%n", r.strategy(), r.exact(), r.rankAware());
                    }
                }
                System.out.printf(Locale.ROOT, "  heap in use after the run %.0f MiB (inputs %.0f MiB of float32; Grams %.1f MiB)%n",
                        heapPeak() / 1048576.0, 4.0 * s * (m + n) / 1048576, 16.0 * s * s / 1048576);
            }
        }
    }

    /** float64 FMA throughput of independent register chains: the compute roof the Gram kernels run against. */
    static double peak(int threads) {
        ForkJoinPool pool = new ForkJoinPool(threads);
        int iterations = 1_000_000, calls = 50;
        double best = 0;
        for (int rep = 0; rep < 3; rep++) {
            long t0 = System.nanoTime();
            double sink = pool.submit(() -> IntStream.range(0, threads).parallel()
                    .mapToDouble(i -> IntStream.range(0, calls).mapToDouble(c -> chains(iterations)).sum()).sum()).join();
            long t1 = System.nanoTime();
            if (sink == 42) {
                System.out.print("");
            }
            double flops = 2.0 * 12 * D.length() * (double) iterations * calls * threads;
            best = Math.max(best, flops / ((t1 - t0) / 1e9) / 1e9);
        }
        pool.shutdown();
        return best;
    }

    private static double chains(int iterations) {
        DoubleVector x = DoubleVector.broadcast(D, 1.0000001), y = DoubleVector.broadcast(D, 0.9999999);
        DoubleVector a0 = DoubleVector.zero(D), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
        DoubleVector a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
        for (int i = 0; i < iterations; i++) {
            a0 = x.fma(y, a0);
            a1 = x.fma(y, a1);
            a2 = x.fma(y, a2);
            a3 = x.fma(y, a3);
            a4 = x.fma(y, a4);
            a5 = x.fma(y, a5);
            a6 = x.fma(y, a6);
            a7 = x.fma(y, a7);
            a8 = x.fma(y, a8);
            a9 = x.fma(y, a9);
            a10 = x.fma(y, a10);
            a11 = x.fma(y, a11);
        }
        return a0.add(a1).add(a2).add(a3).add(a4).add(a5).add(a6).add(a7).add(a8).add(a9).add(a10).add(a11)
                .reduceLanes(jdk.incubator.vector.VectorOperators.ADD);
    }

    private static void resetPeaks() {
        System.gc();
    }

    /** Heap in use now (after the work, before a collection): a rough upper bound on what it needed. */
    private static long heapPeak() {
        Runtime rt = Runtime.getRuntime();
        return rt.totalMemory() - rt.freeMemory();
    }
}
