package io.fedlora.kernels.cuda;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.util.Locale;
import java.util.SplittableRandom;

/**
 * The rate of NORM's Gram matrices on the host ({@code loraNormSquared} of the CPU kernels, which
 * the CUDA backend now calls instead of uploading A and B for cuBLAS), on Llama shapes: GB/s of
 * factor data read, to set beside the PCIe rate a device Gram would need a second upload for
 * (DESIGN §7: about 55 GB/s for PCIe 5 x16). Needs no GPU. Also a section of bin/gpu-check.
 *
 * <pre>{@code
 * java --add-modules jdk.incubator.vector -cp target/classes:target/test-classes:$(cat target/gpu-check/classpath) \
 *     io.fedlora.kernels.cuda.HostGramRate [threads] [BF16|F32]
 * }</pre>
 */
public final class HostGramRate {
    private HostGramRate() {
    }

    public static void main(String[] args) {
        int threads = args.length > 0 ? Integer.parseInt(args[0]) : Runtime.getRuntime().availableProcessors();
        DType dtype = args.length > 1 ? DType.valueOf(args[1]) : DType.BF16;
        System.out.print(table(threads, dtype, false));
    }

    /** One Markdown table: per shape and rank, the best of a few runs and its GB/s of factor data. */
    static String table(int threads, DType dtype, boolean small) {
        StringBuilder out = new StringBuilder();
        int[][] shapes = small ? new int[][] {{48, 48}, {80, 48}} : new int[][] {{4096, 4096}, {11008, 4096}};
        try (Kernels host = Backends.create("vector", threads)) {
            out.append(String.format(Locale.ROOT, "Host Gram (loraNormSquared, %s kernels, %d threads, %s factors)%n%n",
                    host.name(), threads, dtype));
            out.append("| module (out x in) | r | bytes of A and B | time | GB/s |\n|---|---|---|---|---|\n");
            SplittableRandom random = new SplittableRandom(11);
            int[] ranks = {8, 16, 32, 64};
            Matrix[][] as = new Matrix[shapes.length][ranks.length], bs = new Matrix[shapes.length][ranks.length];
            for (int s = 0; s < shapes.length; s++) {
                for (int k = 0; k < ranks.length; k++) {
                    as[s][k] = CudaStreamOrderTest.matrix(random, dtype, ranks[k], shapes[s][1], shapes[s][1]);
                    bs[s][k] = CudaStreamOrderTest.matrix(random, dtype, shapes[s][0], ranks[k], ranks[k]);
                }
            }
            double[] sink = new double[1];
            // Warm-up over every case first, so that the JIT has compiled the Gram before any is timed.
            for (int rep = 0; rep < (small ? 1 : 5); rep++) {
                for (int s = 0; s < shapes.length; s++) {
                    for (int k = 0; k < ranks.length; k++) {
                        sink[0] += host.loraNormSquared(as[s][k], bs[s][k]);
                    }
                }
            }
            for (int s = 0; s < shapes.length; s++) {
                for (int k = 0; k < ranks.length; k++) {
                    int r = ranks[k];
                    long bytes = ((long) r * shapes[s][1] + (long) shapes[s][0] * r) * dtype.byteSize();
                    double best = Double.MAX_VALUE;
                    for (int rep = 0; rep < (small ? 2 : 15); rep++) {
                        long start = System.nanoTime();
                        sink[0] += host.loraNormSquared(as[s][k], bs[s][k]);
                        best = Math.min(best, (System.nanoTime() - start) / 1e9);
                    }
                    out.append(String.format(Locale.ROOT, "| %d x %d | %d | %.2f MiB | %.3f ms | %.2f |%n", shapes[s][0],
                            shapes[s][1], r, bytes / 1048576.0, best * 1e3, bytes / best / 1e9));
                }
            }
            if (Double.isNaN(sink[0])) {
                throw new AssertionError("NaN norm");
            }
        }
        return out.toString();
    }
}
