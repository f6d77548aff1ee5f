package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaDevice.ACCUMULATE;
import static io.fedlora.kernels.cuda.CudaDevice.FINISH;
import static io.fedlora.kernels.cuda.CudaDevice.PAD;
import static io.fedlora.kernels.cuda.CudaDevice.offset;

import io.fedlora.tensor.DType;
import io.fedlora.kernels.Accumulator;
import io.fedlora.tensor.Matrix;
import jcuda.driver.CUdeviceptr;

/**
 * Float32 sums resident in device memory. {@link #add(Matrix, float)} only queues work (staging
 * and accumulate run on the device's streams), so the caller can read and pack the next client
 * while the device works on this one; {@link #finish} waits for everything queued before it.
 */
final class CudaAccumulator implements Accumulator {
    private final CudaKernels owner;
    private final CudaDevice device;
    private int rows, cols;
    private CUdeviceptr sums;

    CudaAccumulator(CudaKernels owner, CudaDevice device, int rows, int cols) {
        this.owner = owner;
        this.device = device;
        this.rows = rows;
        this.cols = cols;
        this.sums = device.alloc(4L * rows * cols, "an accumulator of " + rows + " x " + cols);
        device.zero(sums, (long) rows * cols);
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
        synchronized (device) {
            device.makeCurrent();
            for (CudaDevice.Tile tile : device.tiles(Math.min(rows, src.rows()), Math.min(cols, src.cols()))) {
                int slot = device.nextInputSlot();
                CUdeviceptr staged = device.stage(slot, src, tile.row0(), tile.col0(), tile.rows(), tile.cols());
                device.launch(ACCUMULATE, tile.rows(), tile.cols(), offset(sums, (long) tile.row0() * cols + tile.col0()),
                        cols, staged, src.dtype().ordinal(), tile.cols(), tile.rows(), tile.cols(), weight, null);
                device.release(slot);
            }
        }
    }

    /** fma(1, x, s) is s + x rounded once: the same as the CPU backends' merge. */
    @Override
    public void add(Accumulator other) {
        CudaAccumulator o = (CudaAccumulator) other;
        if (o.device != device) {
            synchronized (o.device) {
                o.device.makeCurrent();
                o.device.synchronize(); // its sums must be complete before this device reads them
            }
        }
        synchronized (device) {
            device.makeCurrent();
            device.launch(ACCUMULATE, o.rows, o.cols, sums, cols, o.sums, DType.F32.ordinal(), o.cols, o.rows, o.cols, 1f,
                    null);
        }
    }

    @Override
    public void grow(int newRows, int newCols) {
        if (newRows < rows || newCols < cols) {
            throw new IllegalArgumentException("cannot shrink " + rows + "x" + cols + " to " + newRows + "x" + newCols);
        }
        if (newRows == rows && newCols == cols) {
            return;
        }
        synchronized (device) {
            device.makeCurrent();
            CUdeviceptr grown = device.alloc(4L * newRows * newCols, "an accumulator of " + newRows + " x " + newCols);
            // pad with no donor: the old sums in the corner, zeros elsewhere.
            device.launch(PAD, newRows, newCols, grown, newCols, newRows, newCols, sums, DType.F32.ordinal(), cols, rows,
                    cols, null, 0);
            device.free(sums);
            sums = grown;
            rows = newRows;
            cols = newCols;
        }
    }

    /** Must match ScalarKernels.scale: out(i, j) = sums(i, j) * (rowScale[i] * colScale[j]). */
    @Override
    public void finish(float[] out, float[] rowScale, float[] colScale) {
        synchronized (device) {
            device.makeCurrent();
            CUdeviceptr rowScales = null, colScales = null;
            try {
                rowScales = device.upload(rowScale, "row scales");
                colScales = device.upload(colScale, "column scales");
                CUdeviceptr result = device.outputSlot();
                for (CudaDevice.Tile tile : device.tiles(rows, cols)) {
                    device.launch(FINISH, tile.rows(), tile.cols(), result, tile.cols(),
                            offset(sums, (long) tile.row0() * cols + tile.col0()), cols, tile.rows(), tile.cols(),
                            offset(rowScales, tile.row0()), offset(colScales, tile.col0()), null);
                    device.download(result, out, cols, tile);
                }
            } finally {
                device.free(rowScales, colScales);
            }
        }
    }

    @Override
    public void close() {
        synchronized (device) {
            if (sums == null) {
                return;
            }
            device.makeCurrent();
            device.free(sums);
            sums = null;
            rows = 0;
            cols = 0;
            owner.forget(this);
        }
    }
}
