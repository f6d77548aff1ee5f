package io.fedlora.kernels.cuda;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import io.fedlora.kernels.cpu.ScalarKernels;
import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * Child-JVM entry for {@link CudaChildProcessTest}: the emulator reads its memory size once per
 * process, and the library path is fixed at JVM start, so these cases need a JVM of their own.
 * Prints what it found; exits 0 when its checks held, 1 otherwise.
 */
public final class EmulatorChild {
    private EmulatorChild() {
    }

    public static void main(String[] args) {
        switch (args[0]) {
            case "chunked" -> chunked();
            case "backends" -> backends();
            case "nocublas" -> withoutCublas();
            case "fault" -> stickyFault();
            default -> throw new IllegalArgumentException(args[0]);
        }
    }

    /** What auto and a forced cuda do here (no driver, or a device too small). */
    private static void backends() {
        System.out.println("cause=" + CudaKernels.unavailabilityCause());
        // The process backend: its choice and the reasons for skipping others are logged once, at INFO.
        System.out.println("chosen=" + Backends.get().name());
        try (Kernels forced = Backends.create("cuda", 1)) {
            System.out.println("forced=" + forced.name());
        } catch (IllegalStateException e) {
            System.out.println("forced failed: " + e.getMessage());
        }
    }

    /**
     * A driver and no libcublas.so.12: every operation without dense algebra runs on CUDA and
     * matches the scalar backend (NORM's Gram, on the host, the vector backend's); the dense
     * algebra (the product-space GEMM) fails saying what is missing.
     */
    private static void withoutCublas() {
        boolean ok = true;
        System.out.println("chosen=" + Backends.get().name());
        // Dense algebra would go to CUDA (CudaAutoRule), but without cuBLAS auto picks vector and says why.
        System.out.println("dense chosen=" + Backends.get(true).name());
        System.out.println("dense warning=" + Backends.report(true).warning());
        try (CudaKernels cuda = new CudaKernels(); ScalarKernels scalar = new ScalarKernels()) {
            SplittableRandom random = new SplittableRandom(3);
            int rows = 11, cols = 57;
            Matrix[] sources = {
                matrix(random, DType.F32, rows, cols, cols), matrix(random, DType.BF16, rows - 2, cols - 5, cols),
                matrix(random, DType.F16, rows, cols - 1, cols),
            };
            float[] weights = {1.5f, 0.25f, 2f};
            float[] want = new float[rows * cols], got = new float[rows * cols];
            scalar.weightedSum(want, rows, cols, sources, weights, null, null);
            ok &= check("weightedSum", cuda.weightedSum(got, rows, cols, sources, weights, null, null) == -1
                    && Arrays.equals(want, got));
            try (Accumulator acc = cuda.newAccumulator(rows - 2, cols - 5)) {
                acc.add(sources[1], weights[1]);
                acc.grow(rows, cols);
                acc.add(sources[0], weights[0]);
                acc.add(sources[2], weights[2]);
                acc.finish(got, null, null);
            }
            scalar.weightedSum(want, rows, cols, new Matrix[] {sources[1], sources[0], sources[2]},
                    new float[] {weights[1], weights[0], weights[2]}, null, null);
            ok &= check("accumulator", Arrays.equals(want, got));
            float[] donor = new float[rows * (cols + 3)], padWant = new float[donor.length], padGot = new float[donor.length];
            Arrays.fill(donor, 3f);
            scalar.pad(padWant, rows, cols + 3, sources[1], donor);
            cuda.pad(padGot, rows, cols + 3, sources[1], donor);
            ok &= check("pad", Arrays.equals(padWant, padGot));
            ok &= check("allFinite", cuda.allFinite(sources[2]));
            // NORM's Gram matrices run on the host: no cuBLAS needed, the vector backend's result bit for bit.
            try (Kernels vector = Backends.create("vector", 2); CudaKernels two = new CudaKernels(2)) {
                Matrix a = sources[0].corner(4, cols), b = sources[0].corner(rows, 4);
                ok &= check("loraNormSquared", Double.compare(vector.loraNormSquared(a, b), two.loraNormSquared(a, b)) == 0);
            }
            try {
                cuda.gemm("product-space GEMM", false, false, 1, 1, 1, 1, new double[1], 1, new double[1], 1, 0, new double[1], 1);
                ok &= check("gemm refused", false);
            } catch (UnsupportedOperationException e) {
                System.out.println("gemm refused: " + e.getMessage());
            }
            System.out.println("dense cause=" + CudaKernels.denseAlgebraUnavailabilityCause());
        }
        System.exit(ok ? 0 : 1);
    }

    /**
     * A kernel faults on the device (a sticky error: the context answers every later call with
     * it). The operation must report the fault from the call that found it, the failing frees of
     * its clean-up only as suppressed; closing the backend must still release everything.
     */
    private static void stickyFault() {
        boolean ok = true;
        CudaKernels cuda = new CudaKernels();
        Matrix[] sources = {Matrix.of(new float[12], 3, 4), Matrix.of(new float[12], 3, 4)};
        Emulator.faultNextLaunch();
        try {
            cuda.weightedSum(new float[12], 3, 4, sources, new float[] {1f, 2f}, new float[] {1f, 1f, 1f}, null);
            ok &= check("the fault was reported", false);
        } catch (RuntimeException e) {
            System.out.println("fault: " + e.getMessage());
            for (Throwable suppressed : e.getSuppressed()) {
                System.out.println("suppressed: " + suppressed.getMessage());
            }
        }
        try {
            cuda.close();
            ok &= check("close in a broken context reported the fault", false);
        } catch (RuntimeException e) {
            System.out.println("close: " + e.getMessage());
        }
        System.out.println("live objects after close: " + Emulator.liveObjects());
        System.exit(ok ? 0 : 1);
    }

    /** Under a small emulated device every operation is cut into many tiles; results must not change. */
    private static void chunked() {
        boolean ok = true;
        try (CudaKernels cuda = new CudaKernels(); ScalarKernels scalar = new ScalarKernels()) {
            System.out.println("device=" + cuda.description());
            SplittableRandom random = new SplittableRandom(11);
            int rows = 37, cols = 301; // 11137 floats: about 11 tiles of 1024
            Matrix[] sources = {
                matrix(random, DType.F32, rows, cols, cols), matrix(random, DType.BF16, rows - 5, cols, cols),
                matrix(random, DType.F16, rows, cols - 7, cols),
            };
            float[] weights = {0.5f, 2f, 1.25f};
            float[] rowScale = new float[rows], colScale = new float[cols];
            Arrays.fill(rowScale, 0.75f);
            for (int j = 0; j < cols; j++) {
                colScale[j] = 1f / (1 + j % 5);
            }
            float[] want = new float[rows * cols], got = new float[rows * cols];
            scalar.weightedSum(want, rows, cols, sources, weights, rowScale, colScale);
            int bad = cuda.weightedSum(got, rows, cols, sources, weights, rowScale, colScale);
            ok &= check("weightedSum", bad == -1 && Arrays.equals(want, got));
            try (Accumulator acc = cuda.newAccumulator(rows, cols)) {
                for (int k = 0; k < sources.length; k++) {
                    acc.add(sources[k], weights[k]);
                }
                acc.finish(got, rowScale, colScale);
            }
            ok &= check("accumulator", Arrays.equals(want, got));
            float[] donor = new float[(rows + 4) * (cols + 3)];
            Arrays.fill(donor, 7f);
            float[] padWant = new float[donor.length], padGot = new float[donor.length];
            scalar.pad(padWant, rows + 4, cols + 3, sources[1], donor);
            cuda.pad(padGot, rows + 4, cols + 3, sources[1], donor);
            ok &= check("pad", Arrays.equals(padWant, padGot));
            ok &= check("allFinite", cuda.allFinite(sources[2]));
            Matrix a = matrix(random, DType.F32, 16, 1500, 1500), b = matrix(random, DType.BF16, 900, 16, 16);
            double normWant = scalar.loraNormSquared(a, b), normGot = cuda.loraNormSquared(a, b);
            ok &= check("loraNormSquared", Math.abs(normWant - normGot) <= 1e-5 * normWant);
            try (Accumulator tooBig = cuda.newAccumulator(1000, 1000)) {
                ok &= check("4 MB accumulator on a 64 KiB device fails", false);
            } catch (IllegalStateException e) {
                System.out.println("too big: " + e.getMessage());
            }
        }
        System.exit(ok ? 0 : 1);
    }

    private static boolean check(String what, boolean held) {
        System.out.println(what + (held ? ": same" : ": DIFFERENT"));
        return held;
    }

    private static Matrix matrix(SplittableRandom random, DType dtype, int rows, int cols, int stride) {
        float[] values = new float[rows * stride];
        for (int i = 0; i < values.length; i++) {
            values[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return new Matrix(Tensor.convert(values, dtype, rows, stride).data(), dtype, 0, rows, cols, stride);
    }
}
