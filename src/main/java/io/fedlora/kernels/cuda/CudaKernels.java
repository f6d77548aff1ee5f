package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaSession.ACCUMULATE;
import static io.fedlora.kernels.cuda.CudaSession.ALL_FINITE;
import static io.fedlora.kernels.cuda.CudaSession.CONVERT;
import static io.fedlora.kernels.cuda.CudaSession.FINISH;
import static io.fedlora.kernels.cuda.CudaSession.PAD;
import static io.fedlora.kernels.cuda.CudaSession.offset;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import jcuda.driver.CUdeviceptr;

/**
 * The CUDA backend: the kernels of {@code cuda/*.cu} (shipped as one PTX resource) through the
 * JCuda driver API, and cuBLAS through JCublas2 for the Gram matrices of NORM weights, loaded
 * only when NORM needs them ({@link DenseAlgebra}). Matches {@code ScalarKernels}: copies bit
 * for bit, sums with the same FMA sequence (DESIGN §2, §4).
 *
 * <p>Constructing it is the probe: it throws {@link UnsupportedOperationException} with the
 * reason when CUDA cannot run here (no driver, no device, too little device memory), which
 * {@code Backends} turns into a fallback for {@code auto} and an error for a forced "cuda".
 * Thread-safe: calls are serialised on the session. Without a GPU, the device emulator in
 * {@code native/} stands in for the driver (see native/README.md).
 */
public final class CudaKernels implements Kernels {

    private final CudaSession session;
    private final StagingRing ring;
    private final DenseAlgebra dense;
    private final List<CudaAccumulator> open = new ArrayList<>();
    private boolean closed;

    /** Opens device 0, or throws UnsupportedOperationException(reason). */
    public CudaKernels() {
        String cause = CudaProbe.unavailabilityCause();
        if (cause != null) {
            throw new UnsupportedOperationException(cause);
        }
        CudaSession opened = null;
        try {
            opened = new CudaSession();
            ring = new StagingRing(opened);
        } catch (RuntimeException e) {
            if (opened != null) {
                try {
                    opened.close();
                } catch (RuntimeException suppressed) {
                    e.addSuppressed(suppressed);
                }
            }
            if (e instanceof UnsupportedOperationException unsupported) {
                throw unsupported;
            }
            throw new UnsupportedOperationException("the CUDA device could not be set up: " + e.getMessage(), e);
        }
        session = opened;
        dense = new DenseAlgebra(session);
    }

    /** True when the one probe found a working driver and device. */
    public static boolean isAvailable() {
        return CudaProbe.unavailabilityCause() == null;
    }

    /** Why CUDA cannot run here, or null when it can. */
    public static String unavailabilityCause() {
        return CudaProbe.unavailabilityCause();
    }

    /**
     * Null when cuBLAS loads here (NORM weights and, later, the product-space algebra run on the
     * GPU), else why not; loads JCublas2 on the first call. Everything else runs without it.
     */
    public static String denseAlgebraUnavailabilityCause() {
        return isAvailable() ? DenseAlgebra.unavailabilityCause() : unavailabilityCause();
    }

    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public String description() {
        return session.description() + String.format(", staging %d KiB x %d", ring.slotBytes() >> 10, StagingRing.SLOTS);
    }

    @Override
    public Accumulator newAccumulator(int rows, int cols) {
        synchronized (session) {
            session.makeCurrent();
            CudaAccumulator accumulator = new CudaAccumulator(this, session, ring, rows, cols);
            open.add(accumulator);
            return accumulator;
        }
    }

    /** Makes the device's context current on this thread and returns its free memory (for tests and diagnostics). */
    long freeDeviceBytes() {
        synchronized (session) {
            session.makeCurrent();
            return session.freeBytes();
        }
    }

    /**
     * Float64 {@code C = alpha op(A) op(B) + beta C} on the device (column-major host arrays), for
     * the product-space operations; see {@link DenseAlgebra#gemm}. Needs cuBLAS.
     */
    double[] gemm(String operation, boolean transA, boolean transB, int m, int n, int k, double alpha, double[] a, int lda,
            double[] b, int ldb, double beta, double[] c, int ldc) {
        synchronized (session) {
            session.makeCurrent();
            return dense.gemm(operation, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    }

    /** Float64 {@code C = alpha op(A) op(A)^T + beta C} on one triangle; see {@link DenseAlgebra#syrk}. Needs cuBLAS. */
    double[] syrk(String operation, boolean upper, boolean transA, int n, int k, double alpha, double[] a, int lda, double beta,
            double[] c, int ldc) {
        synchronized (session) {
            session.makeCurrent();
            return dense.syrk(operation, upper, transA, n, k, alpha, a, lda, beta, c, ldc);
        }
    }

    /** For {@link CudaGram}: the session (its lock and context guard every device call). */
    CudaSession session() {
        return session;
    }

    /** For {@link CudaGram}: the lazily loaded cuBLAS calls. */
    DenseAlgebra dense() {
        return dense;
    }

    /** For bin/gpu-check's per-kernel harness: validates kernels over several block sizes. */
    void threadsPerBlock(int threads) {
        synchronized (session) {
            session.threadsPerBlock(threads);
        }
    }

    void forget(CudaAccumulator accumulator) {
        open.remove(accumulator);
    }

    /**
     * Per tile of the output: zero the tile sums on the device, stream every client's part of the
     * tile through the staging slots into them, scale, bring the tile back. Each source has a
     * device flag that the accumulate kernel raises on a non-finite input, and one more flag says
     * whether any result is non-finite; so the first bad client is named without a second pass.
     */
    @Override
    public int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights, float[] rowScale,
            float[] colScale) {
        synchronized (session) {
            session.makeCurrent();
            int count = sources.length;
            try (CudaSession.Scope scope = session.scope()) {
                CUdeviceptr flags = scope.alloc(4L * (count + 1), "weightedSum flags");
                session.zero(flags, count + 1);
                CUdeviceptr rowScales = scope.upload(rowScale, "row scales");
                CUdeviceptr colScales = scope.upload(colScale, "column scales");
                CUdeviceptr sums = ring.outputSlot();
                for (StagingRing.Tile tile : ring.tiles(rows, cols)) {
                    session.zero(sums, (long) tile.rows() * tile.cols());
                    for (int k = 0; k < count; k++) {
                        Matrix src = sources[k];
                        int r = Math.min(src.rows() - tile.row0(), tile.rows());
                        int c = Math.min(src.cols() - tile.col0(), tile.cols());
                        if (r <= 0 || c <= 0) {
                            continue; // zero-padding: this client holds nothing here
                        }
                        float weight = weights[k];
                        CUdeviceptr flag = offset(flags, k);
                        ring.withStaged(src, tile.row0(), tile.col0(), r, c, staged -> session.launch(ACCUMULATE, r, c, sums,
                                tile.cols(), staged, DTypeCode.of(src.dtype()), c, r, c, weight, flag));
                    }
                    session.launch(FINISH, tile.rows(), tile.cols(), sums, tile.cols(), sums, tile.cols(), tile.rows(),
                            tile.cols(), offset(rowScales, tile.row0()), offset(colScales, tile.col0()), offset(flags, count));
                    ring.download(sums, out, cols, tile);
                }
                int[] found = session.readInts(flags, count + 1);
                if (found[count] == 0) {
                    return -1;
                }
                for (int k = 0; k < count; k++) {
                    if (found[k] != 0) {
                        return k;
                    }
                }
                return count; // finite inputs whose weighted sum overflowed
            }
        }
    }

    @Override
    public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) {
        synchronized (session) {
            session.makeCurrent();
            Matrix donorMatrix = donor == null ? null : Matrix.of(donor, rows, cols);
            CUdeviceptr result = ring.outputSlot();
            for (StagingRing.Tile tile : ring.tiles(rows, cols)) {
                int r = Math.clamp(src.rows() - tile.row0(), 0, tile.rows());
                int c = Math.clamp(src.cols() - tile.col0(), 0, tile.cols());
                int donorRows = donorMatrix == null ? 0 : tile.rows();
                ring.withStaged(src, tile.row0(), tile.col0(), r, c, staged -> ring.withStaged(donorMatrix, tile.row0(),
                        tile.col0(), donorRows, tile.cols(), donorTile -> session.launch(PAD, tile.rows(), tile.cols(), result,
                                tile.cols(), tile.rows(), tile.cols(), staged, DTypeCode.of(src.dtype()), c, r, c, donorTile,
                                tile.cols())));
                ring.download(result, out, cols, tile);
            }
        }
    }

    /**
     * On the host ({@link HostScan}): host-resident data read once here costs less than packing
     * and uploading it, and the client then crosses PCIe once, for its sum. Needs no device lock.
     */
    @Override
    public boolean allFinite(Matrix src) {
        return HostScan.allFinite(src, ring.packers(), StagingRing.PACKERS);
    }

    /** The device kernel fedlora_all_finite, for data that is on the device (and validated by bin/gpu-check). */
    boolean deviceAllFinite(Matrix src) {
        synchronized (session) {
            session.makeCurrent();
            try (CudaSession.Scope scope = session.scope()) {
                CUdeviceptr flag = scope.alloc(4, "allFinite flag");
                session.zero(flag, 1);
                for (StagingRing.Tile tile : ring.tiles(src.rows(), src.cols())) {
                    ring.withStaged(src, tile.row0(), tile.col0(), tile.rows(), tile.cols(), staged -> session.launch(ALL_FINITE,
                            tile.rows(), tile.cols(), staged, DTypeCode.of(src.dtype()), tile.cols(), tile.rows(), tile.cols(),
                            flag));
                }
                return session.readInts(flag, 1)[0] == 0;
            }
        }
    }

    /**
     * {@code ||B A||_F^2 = sum((A A^T) .* (B^T B))}: cuBLAS builds both r x r Gram matrices from
     * slot-sized bands (column bands of A, row bands of B, summed with beta = 1), and the host
     * sums their elementwise product in double (r^2 values, not worth a kernel). Each element of
     * A and B crosses PCIe once. Needs cuBLAS; without it, fails saying so before touching the device.
     */
    @Override
    public double loraNormSquared(Matrix a, Matrix b) {
        synchronized (session) {
            session.makeCurrent();
            String operation = "loraNormSquared (NORM weights)";
            dense.require(operation);
            int r = a.rows(), n = a.cols(), m = b.rows();
            if (r > ring.slotFloats()) {
                throw new IllegalStateException("rank " + r + " exceeds the CUDA staging slot of " + ring.slotFloats()
                        + " floats; the device has too little free memory");
            }
            try (CudaSession.Scope scope = session.scope()) {
                CUdeviceptr gramA = scope.alloc(4L * r * r, "Gram matrix A A^T");
                CUdeviceptr gramB = scope.alloc(4L * r * r, "Gram matrix B^T B");
                // A's row-major [r, w] band is a column-major w x r matrix X: A A^T = X^T X.
                int bandCols = Math.max(1, ring.slotFloats() / r);
                for (int c0 = 0; c0 < n; c0 += bandCols) {
                    int w = Math.min(bandCols, n - c0);
                    boolean accumulate = c0 > 0;
                    ring.withStaged(a, 0, c0, r, w, staged -> dense.gram(operation, asFloat(staged, a.dtype(), r, w), w, r, w,
                            true, accumulate, gramA));
                }
                // B's row-major [h, r] band is a column-major r x h matrix Y: B^T B = Y Y^T.
                for (int r0 = 0; r0 < m; r0 += bandCols) {
                    int h = Math.min(bandCols, m - r0);
                    boolean accumulate = r0 > 0;
                    ring.withStaged(b, r0, 0, h, r, staged -> dense.gram(operation, asFloat(staged, b.dtype(), h, r), r, r, h,
                            false, accumulate, gramB));
                }
                float[] aat = session.readFloats(gramA, r * r), btb = session.readFloats(gramB, r * r);
                double sum = 0;
                for (int i = 0; i < aat.length; i++) {
                    sum += (double) aat[i] * btb[i];
                }
                return sum;
            }
        }
    }

    /** cuBLAS reads float32 only: a BF16/F16 tile is converted into the output slot first. */
    private CUdeviceptr asFloat(CUdeviceptr staged, DType dtype, int rows, int cols) {
        if (dtype == DType.F32) {
            return staged;
        }
        CUdeviceptr converted = ring.outputSlot();
        session.launch(CONVERT, rows, cols, converted, cols, staged, DTypeCode.of(dtype), cols, rows, cols);
        return converted;
    }

    /** Frees the accumulators still open, then everything the device session created; the first failure is thrown. */
    @Override
    public void close() {
        synchronized (session) {
            if (closed) {
                return;
            }
            closed = true;
            CudaSession.Teardown teardown = new CudaSession.Teardown();
            teardown.run(session::makeCurrent);
            for (CudaAccumulator accumulator : List.copyOf(open)) {
                teardown.run(accumulator::close);
            }
            teardown.run(dense::close);
            teardown.run(ring::close);
            teardown.run(session::close);
            teardown.rethrow();
        }
    }
}
