package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaSession.ACCUMULATE;
import static io.fedlora.kernels.cuda.CudaSession.FINISH;
import static io.fedlora.kernels.cuda.CudaSession.PAD;
import static io.fedlora.kernels.cuda.CudaSession.offset;

import io.fedlora.kernels.Accumulator;
import io.fedlora.tensor.Matrix;
import jcuda.driver.CUdeviceptr;

/**
 * Float32 sums resident in device memory. {@link #add(Matrix, float)} only queues work (staging
 * and accumulate run on the device's streams), so the caller can read and pack the next client
 * while the device works on this one; {@link #finish} waits for everything queued before it.
 * A failing call leaves no device memory behind: what it allocated is freed before it throws.
 */
final class CudaAccumulator implements Accumulator {
    private final CudaKernels owner;
    private final CudaSession session;
    private final StagingRing ring;
    private int rows, cols;
    private CUdeviceptr sums;

    CudaAccumulator(CudaKernels owner, CudaSession session, StagingRing ring, int rows, int cols) {
        this.owner = owner;
        this.session = session;
        this.ring = ring;
        this.rows = rows;
        this.cols = cols;
        this.sums = zeroed(rows, cols);
    }

    /** A zeroed rows x cols device buffer; freed again if zeroing it fails. */
    private CUdeviceptr zeroed(int rows, int cols) {
        CUdeviceptr buffer = session.alloc(4L * rows * cols, "an accumulator of " + rows + " x " + cols);
        try {
            session.zero(buffer, (long) rows * cols);
        } catch (RuntimeException e) {
            freeAfterFailure(buffer, e);
            throw e;
        }
        return buffer;
    }

    private void freeAfterFailure(CUdeviceptr buffer, RuntimeException failure) {
        try {
            session.free(buffer);
        } catch (RuntimeException suppressed) {
            failure.addSuppressed(suppressed);
        }
    }

    @Override
    public int rows() {
        return rows;
    }

    @Override
    public int cols() {
        return cols;
    }

    /** Must match ScalarKernels' accumulate: sums(i, j) = fma(weight, src(i, j), sums(i, j)). */
    @Override
    public void add(Matrix src, float weight) {
        session.makeCurrent();
        for (StagingRing.Tile tile : ring.tiles(Math.min(rows, src.rows()), Math.min(cols, src.cols()))) {
            CUdeviceptr target = offset(sums, (long) tile.row0() * cols + tile.col0());
            ring.withStaged(src, tile.row0(), tile.col0(), tile.rows(), tile.cols(), staged -> session.launch(ACCUMULATE,
                    tile.rows(), tile.cols(), target, cols, staged, DTypeCode.of(src.dtype()), tile.cols(), tile.rows(),
                    tile.cols(), weight, null));
        }
    }

    /** fma(1, x, s) is s + x rounded once: the same as the CPU backends' merge. */
    @Override
    public void add(Accumulator other) {
        CudaAccumulator o = (CudaAccumulator) other;
        if (o.session != session) {
            o.session.makeCurrent();
            o.session.synchronize(); // its sums must be complete before this device reads them
        }
        session.makeCurrent();
        session.launch(ACCUMULATE, o.rows, o.cols, sums, cols, o.sums, DTypeCode.F32, o.cols, o.rows, o.cols, 1f, null);
    }

    @Override
    public void grow(int newRows, int newCols) {
        if (newRows < rows || newCols < cols) {
            throw new IllegalArgumentException("cannot shrink " + rows + "x" + cols + " to " + newRows + "x" + newCols);
        }
        if (newRows == rows && newCols == cols) {
            return;
        }
        session.makeCurrent();
        synchronized (session) {
            CUdeviceptr grown = session.alloc(4L * newRows * newCols, "an accumulator of " + newRows + " x " + newCols);
            try {
                // pad with no donor: the old sums in the corner, zeros elsewhere.
                session.launch(PAD, newRows, newCols, grown, newCols, newRows, newCols, sums, DTypeCode.F32, cols, rows, cols,
                        null, 0);
            } catch (RuntimeException e) {
                freeAfterFailure(grown, e); // the old sums stay, unchanged
                throw e;
            }
            CUdeviceptr old = sums;
            sums = grown;
            rows = newRows;
            cols = newCols;
            session.free(old);
        }
    }

    /** Must match ScalarKernels.scale: out(i, j) = sums(i, j) * (rowScale[i] * colScale[j]). */
    @Override
    public void finish(float[] out, float[] rowScale, float[] colScale) {
        session.makeCurrent();
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr rowScales = scope.upload(rowScale, "row scales");
            CUdeviceptr colScales = scope.upload(colScale, "column scales");
            try (StagingRing.Held output = ring.lockOutput()) {
                CUdeviceptr result = ring.outputSlot();
                for (StagingRing.Tile tile : ring.tiles(rows, cols)) {
                    session.launch(FINISH, tile.rows(), tile.cols(), result, tile.cols(),
                            offset(sums, (long) tile.row0() * cols + tile.col0()), cols, tile.rows(), tile.cols(),
                            offset(rowScales, tile.row0()), offset(colScales, tile.col0()), null);
                    ring.download(result, out, cols, tile);
                }
            }
        }
    }

    @Override
    public void close() {
        synchronized (session) {
            if (sums == null) {
                return;
            }
            CUdeviceptr held = sums;
            sums = null;
            rows = 0;
            cols = 0;
            owner.forget(this);
            session.makeCurrent();
            session.free(held);
        }
    }
}
