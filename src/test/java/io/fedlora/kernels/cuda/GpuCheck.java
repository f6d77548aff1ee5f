package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaFailure.check;
import static jcuda.driver.JCudaDriver.cuCtxSynchronize;
import static jcuda.driver.JCudaDriver.cuDeviceGetAttribute;
import static jcuda.driver.JCudaDriver.cuMemFreeHost;
import static jcuda.driver.JCudaDriver.cuMemHostAlloc;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoH;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoD;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.TestClients;
import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import jcuda.Pointer;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;

/**
 * The per-kernel harness and the Llama-shaped round of {@code bin/gpu-check} (llm.c dev/cuda
 * style): every kernel validated against the scalar backend over several block sizes, then
 * host-to-device copy, kernel and device-to-host copy timed apart with GB/s beside the device's
 * peak, then a whole round against the vector backend. Writes Markdown to stdout; exits 1 when
 * a validation failed. {@code --emulator} shrinks every size so that the run takes seconds on
 * the device emulator, whose timings mean nothing.
 */
public final class GpuCheck {
    private static final int[] BLOCK_SIZES = {32, 64, 128, 256, 512, 1024};

    private final boolean emulator;
    private boolean failed;

    private GpuCheck(boolean emulator) {
        this.emulator = emulator;
    }

    public static void main(String[] args) throws Exception {
        GpuCheck check = new GpuCheck(Arrays.asList(args).contains("--emulator"));
        String cause = CudaKernels.unavailabilityCause();
        if (cause != null) {
            System.out.println("CUDA cannot run here: " + cause);
            System.exit(1);
        }
        try (CudaKernels cuda = new CudaKernels(); ScalarKernels scalar = new ScalarKernels()) {
            System.out.println("Device: " + cuda.description() + "\n");
            System.out.println("cuBLAS: " + (DenseAlgebra.unavailabilityCause() == null ? "loaded"
                    : "not available (" + DenseAlgebra.unavailabilityCause() + ")") + "\n");
            check.validate(cuda, scalar);
            check.time(cuda);
            // NORM's Gram on the host (CudaKernels.loraNormSquared): its rate beside the H2D rate above.
            System.out.println("## NORM's Gram matrices on the host, beside the H2D rate above\n");
            if (check.emulator) {
                System.out.println("**Emulator run: shapes shrunk to seconds; these timings mean nothing.**\n");
            }
            System.out.println(HostGramRate.table(Runtime.getRuntime().availableProcessors(), DType.BF16, check.emulator));
            check.round(cuda);
        }
        System.exit(check.failed ? 1 : 0);
    }

    // ---- validation over block sizes -------------------------------------------------------------

    private void validate(CudaKernels cuda, ScalarKernels scalar) {
        System.out.println("## Kernels validated against ScalarKernels over block sizes\n");
        System.out.println("| operation (kernels) | " + String.join(" | ", Arrays.stream(BLOCK_SIZES).mapToObj(b -> b + " threads")
                .toList()) + " |");
        System.out.println("|---|" + "---|".repeat(BLOCK_SIZES.length));
        SplittableRandom random = new SplittableRandom(42);
        int rows = emulator ? 19 : 301, cols = emulator ? 67 : 4099;
        Matrix[] sources = {
            CudaStreamOrderTest.matrix(random, DType.F32, rows, cols, cols),
            CudaStreamOrderTest.matrix(random, DType.BF16, rows - 3, cols - 11, cols),
            CudaStreamOrderTest.matrix(random, DType.F16, rows, cols - 2, cols),
        };
        float[] weights = {0.75f, 1.25f, 2f};
        float[] rowScale = new float[rows];
        Arrays.fill(rowScale, 1f / 3);
        float[] donor = new float[(rows + 5) * (cols + 7)];
        Arrays.fill(donor, 0.5f);
        List<String[]> rowsOut = List.of(new String[] {"weightedSum (accumulate, finish)"}, new String[] {"accumulator (accumulate, pad, finish)"},
                new String[] {"pad with donor (pad)"}, new String[] {"allFinite (all_finite)"});
        List<List<String>> cells = new ArrayList<>();
        for (int k = 0; k < rowsOut.size(); k++) {
            cells.add(new ArrayList<>());
        }
        float[] want = new float[rows * cols], got = new float[rows * cols];
        scalar.weightedSum(want, rows, cols, sources, weights, rowScale, null);
        float[] padWant = new float[donor.length];
        scalar.pad(padWant, rows + 5, cols + 7, sources[1], donor);
        for (int threads : BLOCK_SIZES) {
            cuda.threadsPerBlock(threads);
            Arrays.fill(got, Float.NaN);
            cells.get(0).add(verdict(cuda.weightedSum(got, rows, cols, sources, weights, rowScale, null) == -1
                    && Arrays.equals(want, got)));
            try (Accumulator acc = cuda.newAccumulator(rows - 3, cols - 11)) {
                acc.add(sources[1], weights[1]);
                acc.grow(rows, cols);
                acc.add(sources[0], weights[0]);
                acc.add(sources[2], weights[2]);
                acc.finish(got, rowScale, null);
            }
            float[] accWant = new float[rows * cols];
            scalar.weightedSum(accWant, rows, cols, new Matrix[] {sources[1], sources[0], sources[2]},
                    new float[] {weights[1], weights[0], weights[2]}, rowScale, null);
            cells.get(1).add(verdict(Arrays.equals(accWant, got)));
            float[] padGot = new float[donor.length];
            cuda.pad(padGot, rows + 5, cols + 7, sources[1], donor);
            cells.get(2).add(verdict(Arrays.equals(padWant, padGot)));
            Matrix bad = CudaStreamOrderTest.matrix(random, DType.BF16, 3, cols, cols);
            bad.dtype().set(bad.data(), 2L * cols + cols / 2, Float.NaN);
            cells.get(3).add(verdict(cuda.deviceAllFinite(sources[0]) && cuda.deviceAllFinite(sources[2])
                    && !cuda.deviceAllFinite(bad)));
        }
        cuda.threadsPerBlock(256);
        for (int k = 0; k < rowsOut.size(); k++) {
            System.out.println("| " + rowsOut.get(k)[0] + " | " + String.join(" | ", cells.get(k)) + " |");
        }
        System.out.println("\nSums and copies bit for bit (NORM's Gram runs on the host: see the host Gram table below). "
                + rows + " x " + cols + " outputs, three clients (F32, BF16, F16).\n");
    }

    private String verdict(boolean ok) {
        failed |= !ok;
        return ok ? "ok" : "**MISMATCH**";
    }

    // ---- timings -------------------------------------------------------------------------------

    private void time(CudaKernels cuda) {
        System.out.println("## H2D, kernel and D2H timed apart (block size 256)\n");
        if (emulator) {
            System.out.println("**Emulator: these timings measure the host running the emulator and mean nothing about a GPU.**\n");
        }
        long bytes = emulator ? 1L << 20 : 256L << 20;
        int floats = (int) (bytes / Float.BYTES);
        int reps = emulator ? 2 : 10;
        try (CudaSession session = new CudaSession()) {
            double peak = devicePeakGbs();
            Pointer pinned = new Pointer();
            check(cuMemHostAlloc(pinned, bytes, 0), "cuMemHostAlloc");
            try (CudaSession.Scope scope = session.scope()) {
                CUdeviceptr src = scope.alloc(bytes, "timing source");
                CUdeviceptr sums = scope.alloc(bytes, "timing sums");
                check(cuMemcpyHtoD(src, pinned, bytes), "cuMemcpyHtoD");
                session.zero(sums, floats);
                double h2d = best(reps, () -> check(cuMemcpyHtoD(src, pinned, bytes), "cuMemcpyHtoD"));
                double d2h = best(reps, () -> check(cuMemcpyDtoH(pinned, src, bytes), "cuMemcpyDtoH"));
                int rows = emulator ? 64 : 4096, cols = floats / rows;
                double kernel = best(reps, () -> {
                    session.launch(CudaSession.ACCUMULATE, rows, cols, sums, cols, src, DTypeCode.F32, cols, rows, cols, 0.5f, null);
                    check(cuCtxSynchronize(), "cuCtxSynchronize");
                });
                // Host-resident data through the staging ring: pack, upload, accumulate, as a round does.
                Matrix host = Matrix.of(new float[floats], rows, cols);
                float[] out = new float[floats];
                double staged = best(reps, () -> cuda.weightedSum(out, rows, cols, new Matrix[] {host}, new float[] {1f}, null, null));
                String peakText = peak > 0 ? String.format(Locale.ROOT, "%.0f GB/s", peak) : "unknown (attributes not reported)";
                System.out.println("| step | bytes | time | GB/s | reference peak |");
                System.out.println("|---|---|---|---|---|");
                row("H2D copy, pinned", bytes, h2d, "PCIe 5 x16 about 55 GB/s in practice (DESIGN §7)");
                row("D2H copy, pinned", bytes, d2h, "same link");
                row("accumulate kernel (read src + sums, write sums)", 3 * bytes, kernel, "HBM " + peakText);
                row("weightedSum from host memory (pack + H2D + kernels + D2H)", 2 * bytes, staged,
                        "min(PCIe, packing threads); CudaAutoRule");
                System.out.println();
            } finally {
                check(cuMemFreeHost(pinned), "cuMemFreeHost");
            }
        }
    }

    private static void row(String step, long bytes, double seconds, String peak) {
        System.out.printf(Locale.ROOT, "| %s | %d MiB | %.3f ms | %.1f | %s |%n", step, bytes >> 20, seconds * 1e3,
                bytes / seconds / 1e9, peak);
    }

    /** The device's memory bandwidth from its clock and bus width, GB/s; 0 when the driver does not say. */
    private static double devicePeakGbs() {
        CUdevice device = new CUdevice();
        int[] clock = new int[1], width = new int[1];
        if (jcuda.driver.JCudaDriver.cuDeviceGet(device, 0) != 0
                || cuDeviceGetAttribute(clock, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, device) != 0
                || cuDeviceGetAttribute(width, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, device)
                        != 0) {
            return 0;
        }
        return 2.0 * clock[0] * 1e3 * width[0] / 8 / 1e9; // double data rate, kHz, bits
    }

    private static double best(int reps, Runnable step) {
        step.run(); // warm-up
        double best = Double.MAX_VALUE;
        for (int r = 0; r < reps; r++) {
            long start = System.nanoTime();
            step.run();
            best = Math.min(best, (System.nanoTime() - start) / 1e9);
        }
        return best;
    }

    // ---- a Llama-shaped round ------------------------------------------------------------------

    private void round(CudaKernels cuda) throws Exception {
        System.out.println("## A Llama-shaped round, CUDA against the vector backend\n");
        int layers = emulator ? 1 : 2, clients = emulator ? 4 : 16;
        int hidden = emulator ? 48 : 4096, mlp = emulator ? 80 : 11008;
        List<TestClients.Shape> shapes = new ArrayList<>();
        for (int l = 0; l < layers; l++) {
            String p = "base_model.model.model.layers." + l + ".";
            for (String m : List.of("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")) {
                shapes.add(new TestClients.Shape(p + m, hidden, hidden));
            }
            shapes.add(new TestClients.Shape(p + "mlp.gate_proj", hidden, mlp));
            shapes.add(new TestClients.Shape(p + "mlp.up_proj", hidden, mlp));
            shapes.add(new TestClients.Shape(p + "mlp.down_proj", mlp, hidden));
        }
        int[] ranks = new int[clients];
        for (int k = 0; k < clients; k++) {
            ranks[k] = new int[] {8, 16, 32, 64}[k % 4];
        }
        List<ClientUpdate> updates = TestClients.clients(ranks, shapes, DType.BF16, 7);
        long bytes = 0;
        for (ClientUpdate c : updates) {
            for (Tensor t : c.tensors().values()) {
                bytes += t.elementCount() * t.dtype().byteSize();
            }
        }
        System.out.printf(Locale.ROOT, "%d layers x 7 modules (%d x %d attention, %d -> %d MLP), %d clients, ranks 8/16/32/64,"
                + " BF16: %.1f MiB of client data.%n%n", layers, hidden, hidden, hidden, mlp, clients, bytes / 1048576.0);
        if (emulator) {
            System.out.println("**Emulator: shapes shrunk so that the run takes seconds; the times mean nothing.**\n");
        }
        System.out.println("| strategy | cuda | vector | largest difference | agrees (1e-5 relative) |");
        System.out.println("|---|---|---|---|---|");
        try (Kernels vector = io.fedlora.kernels.Backends.create("vector", Runtime.getRuntime().availableProcessors())) {
            for (Strategy strategy : List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM, Strategy.SVD)) {
                if (strategy == Strategy.SVD && DenseAlgebra.unavailabilityCause() != null) {
                    System.out.println("| SVD | skipped: no cuBLAS (" + DenseAlgebra.unavailabilityCause() + ") | | | |");
                    continue;
                }
                Map<String, Tensor>[] result = new Map[2];
                double cudaTime = best(emulator ? 1 : 3, () -> result[0] = aggregate(strategy, cuda, updates));
                double vectorTime = best(emulator ? 1 : 3, () -> result[1] = aggregate(strategy, vector, updates));
                double worst = 0;
                boolean agrees = result[0].keySet().equals(result[1].keySet());
                for (var e : result[1].entrySet()) {
                    float[] want = e.getValue().toFloatArray(), got = result[0].get(e.getKey()).toFloatArray();
                    if (strategy == Strategy.SVD) {
                        // Singular vectors of close singular values may turn within their span when
                        // the float64 Grams are summed in another order; the singular values (B's
                        // column norms under the FlexLoRA split) may not. A has orthonormal rows.
                        if (!e.getKey().contains("lora_B")) {
                            continue;
                        }
                        long[] shape = e.getValue().shape();
                        want = columnNorms(want, (int) shape[0], (int) shape[1]);
                        got = columnNorms(got, (int) shape[0], (int) shape[1]);
                    }
                    for (int i = 0; i < want.length; i++) {
                        double diff = Math.abs(got[i] - want[i]);
                        worst = Math.max(worst, diff);
                        agrees &= diff <= 1e-6 + 1e-5 * Math.abs(want[i]);
                    }
                }
                System.out.printf(Locale.ROOT, "| %s | %.1f ms | %.1f ms | %.2e | %s |%n", strategy, cudaTime * 1e3, vectorTime * 1e3,
                        worst, verdict(agrees));
            }
        }
        System.out.println("\nSVD (Grams and back-projections through cuBLAS, `CudaGram`) is compared on its singular values,"
                + " the column norms of B.");
        System.out.println();
    }

    private static float[] columnNorms(float[] b, int rows, int cols) {
        double[] sums = new double[cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                sums[j] += (double) b[i * cols + j] * b[i * cols + j];
            }
        }
        float[] norms = new float[cols];
        for (int j = 0; j < cols; j++) {
            norms[j] = (float) Math.sqrt(sums[j]);
        }
        return norms;
    }

    private static Map<String, Tensor> aggregate(Strategy strategy, Kernels kernels, List<ClientUpdate> updates) {
        try (Aggregator aggregator = Aggregator.builder().strategy(strategy).kernels(kernels).build()) {
            return aggregator.aggregate(updates);
        }
    }
}
