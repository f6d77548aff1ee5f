package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaSession.ACCUMULATE;
import static io.fedlora.kernels.cuda.CudaSession.ALL_FINITE;
import static io.fedlora.kernels.cuda.CudaSession.FINISH;
import static io.fedlora.kernels.cuda.CudaSession.PAD;
import static io.fedlora.kernels.cuda.CudaSession.offset;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import jcuda.driver.CUdeviceptr;

/**
 * The CUDA backend: the kernels of {@code cuda/*.cu} (shipped as one PTX resource) through the
 * JCuda driver API; cuBLAS (JCublas2, {@link DenseAlgebra}) only for the product-space algebra,
 * loaded when that first needs it. NORM's Gram matrices run on the host ({@link #loraNormSquared}).
 * Matches {@code ScalarKernels}: copies bit for bit, sums with the same FMA sequence (DESIGN §2, §4).
 *
 * <p>Constructing it is the probe: it throws {@link UnsupportedOperationException} with the
 * reason when CUDA cannot run here (no driver, no device, too little device memory), which
 * {@code Backends} turns into a fallback for {@code auto} and an error for a forced "cuda".
 * Without a GPU, the device emulator in {@code native/} stands in for the driver (see
 * native/README.md).
 *
 * <p>Thread-safe, and the device lock (the {@link CudaSession}'s monitor) is held only around
 * device state: allocating and freeing device memory, queueing work on the two streams (copies,
 * memsets, launches, event records and waits; one staged block's upload, its events and the
 * kernels that read it are queued as one unit), the launch geometry, the cuBLAS handle and
 * the list of open accumulators. Host work runs outside it: the finiteness scan and NORM's
 * Gram matrices (no device at all), packing a block into its pinned staging slot and waiting
 * for that slot's previous upload (each input slot belongs to one operation at a time, see
 * {@link StagingRing}), and waiting for streams ({@code cuStreamSynchronize}, the synchronous
 * copies of flags and scales), which the driver allows while other threads queue. What is still
 * serialised besides the queueing: the operations that bring tiles back through the one output
 * slot (weightedSum, pad, an accumulator's finish) take turns on it, including their packing;
 * there are two input slots, so at most two operations pack at once; and the float64 dense
 * algebra runs whole under the device lock.
 */
public final class CudaKernels implements Kernels {

    private final CudaSession session;
    private final StagingRing ring;
    private final DenseAlgebra dense;
    /** The host side: NORM's Gram matrices (see {@link #loraNormSquared}). */
    private final Kernels host;
    private final List<CudaAccumulator> open = new ArrayList<>();
    private boolean closed;

    /** Opens device 0 with {@link Backends#defaultThreads()} host threads, or throws UnsupportedOperationException(reason). */
    public CudaKernels() {
        this(Backends.defaultThreads());
    }

    /**
     * Opens device 0, or throws UnsupportedOperationException(reason); {@code threads} is what the
     * host side (the NORM Gram matrices) runs on.
     */
    public CudaKernels(int threads) {
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
        host = cpuKernels(threads);
    }

    /** The CPU kernels for the host side: vector when the Vector API is in the module graph, else scalar. */
    private static Kernels cpuKernels(int threads) {
        try {
            return Backends.create("vector", threads);
        } catch (IllegalStateException e) {
            return Backends.create("scalar", threads);
        }
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
     * Null when cuBLAS loads here (the product-space algebra can run on the GPU), else why not;
     * loads JCublas2 on the first call. Everything else, NORM included, runs without it.
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
        session.makeCurrent();
        CudaAccumulator accumulator = new CudaAccumulator(this, session, ring, rows, cols);
        synchronized (session) {
            open.add(accumulator);
        }
        return accumulator;
    }

    /** Makes the device's context current on this thread and returns its free memory (for tests and diagnostics). */
    long freeDeviceBytes() {
        session.makeCurrent();
        return session.freeBytes();
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
        session.threadsPerBlock(threads);
    }

    /** Tests only: {@code hook} runs before each block is packed for the device, outside the device lock. */
    void packHook(java.util.function.Consumer<Matrix> hook) {
        ring.packHook(hook);
    }

    void forget(CudaAccumulator accumulator) {
        synchronized (session) {
            open.remove(accumulator);
        }
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
        session.makeCurrent();
        int count = sources.length;
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr flags = scope.alloc(4L * (count + 1), "weightedSum flags");
            session.zero(flags, count + 1);
            CUdeviceptr rowScales = scope.upload(rowScale, "row scales");
            CUdeviceptr colScales = scope.upload(colScale, "column scales");
            try (StagingRing.Held output = ring.lockOutput()) {
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

    @Override
    public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) {
        session.makeCurrent();
        Matrix donorMatrix = donor == null ? null : Matrix.of(donor, rows, cols);
        try (StagingRing.Held output = ring.lockOutput()) {
            CUdeviceptr result = ring.outputSlot();
            for (StagingRing.Tile tile : ring.tiles(rows, cols)) {
                int r = Math.clamp(src.rows() - tile.row0(), 0, tile.rows());
                int c = Math.clamp(src.cols() - tile.col0(), 0, tile.cols());
                int donorRows = donorMatrix == null ? 0 : tile.rows();
                ring.withStaged(List.of(new StagingRing.Block(src, tile.row0(), tile.col0(), r, c),
                        new StagingRing.Block(donorMatrix, tile.row0(), tile.col0(), donorRows, tile.cols())),
                        staged -> session.launch(PAD, tile.rows(), tile.cols(), result, tile.cols(), tile.rows(), tile.cols(),
                                staged[0], DTypeCode.of(src.dtype()), c, r, c, staged[1], tile.cols()));
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

    /**
     * On the host, by the CPU kernels (vector, else scalar), so that NORM needs no cuBLAS and
     * each client crosses PCIe once per operation, for its weighted sum (the facade screens a
     * NORM client through this method, then accumulates it). The device route it replaces
     * uploaded A and B for two cuBLAS Sgemm Grams, then uploaded them again for the sum.
     *
     * <p>Measured ({@code HostGramRate} in the test sources; vector kernels, 2026-12-01, the
     * shared 2-core build machine under a load of 4, so noisy): Llama modules 4096 x 4096 and
     * 11008 x 4096, r = 8..64, best of 15 after warm-up: 0.8-1.5 GB/s of BF16 factor data and
     * 1.3-2.6 GB/s of F32 on one thread (two threads were no faster on that loaded machine);
     * about 0.1-2.8 ms per module. The rate hardly depends on r, which suggests the time goes into
     * converting and transposing A rather than into the r / 2 FMAs per element. PCIe 5 x16 moves about 55 GB/s
     * (DESIGN §7): a second upload of the same module would take 2-70 us, so on a real GPU the
     * device Gram from the same upload as the sum would be the faster route, by 20-70x per byte
     * against one core here. It needs an SPI operation that keeps the client on the device
     * between its norm and its add (the weight is the norm), which is the follow-up. Until then
     * the host route is what the vector backend runs too, so a forced-CUDA NORM round costs
     * the vector backend's Gram plus one PCIe pass, and {@link CudaAutoRule} sends NORM to the
     * vector backend. Bit for bit the vector backend's norm at the same thread count. Touches
     * no device state, so it takes no lock.
     */
    @Override
    public double loraNormSquared(Matrix a, Matrix b) {
        return host.loraNormSquared(a, b);
    }

    /**
     * Waits for operations that are staging data, then frees the accumulators still open and
     * everything the device session created; the first failure is thrown. Operations started
     * after close fail ("the CUDA backend is closed").
     */
    @Override
    public void close() {
        // Operations still packing hold staging slots without the device lock: let them finish first.
        ring.drain();
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
            teardown.run(host::close);
            teardown.run(ring::close);
            teardown.run(session::close);
            teardown.rethrow();
        }
    }
}
