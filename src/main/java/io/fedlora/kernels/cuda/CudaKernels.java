package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaDevice.ACCUMULATE;
import static io.fedlora.kernels.cuda.CudaDevice.ALL_FINITE;
import static io.fedlora.kernels.cuda.CudaDevice.CONVERT;
import static io.fedlora.kernels.cuda.CudaDevice.FINISH;
import static io.fedlora.kernels.cuda.CudaDevice.PAD;
import static io.fedlora.kernels.cuda.CudaDevice.offset;

import io.fedlora.tensor.DType;
import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import jcuda.driver.CUdeviceptr;

/**
 * The CUDA backend: the kernels of {@code cuda/*.cu} (shipped as one PTX resource) through the
 * JCuda driver API, and cuBLAS through JCublas2 for the Gram matrices of NORM weights. Matches
 * {@code ScalarKernels}: copies bit for bit, sums with the same FMA sequence (DESIGN §2, §4).
 *
 * <p>Constructing it is the probe: it throws {@link UnsupportedOperationException} with the
 * reason when CUDA cannot run here (no driver, no device, too little device memory), which
 * {@code Backends} turns into a fallback for {@code auto} and an error for a forced "cuda".
 * Thread-safe: calls are serialised on the device. Without a GPU, the device emulator in
 * {@code native/} stands in for the driver (see native/README.md).
 */
public final class CudaKernels implements Kernels {

    private final CudaDevice device;
    private final List<CudaAccumulator> open = new ArrayList<>();

    /** Opens device 0, or throws UnsupportedOperationException(reason). */
    public CudaKernels() {
        device = new CudaDevice();
    }

    /** True when the one probe found a working driver and device. */
    public static boolean isAvailable() {
        return CudaDevice.unavailabilityCause() == null;
    }

    /** Why CUDA cannot run here, or null when it can. */
    public static String unavailabilityCause() {
        return CudaDevice.unavailabilityCause();
    }

    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public String description() {
        return device.description();
    }

    @Override
    public Accumulator newAccumulator(int rows, int cols) {
        synchronized (device) {
            device.makeCurrent();
            CudaAccumulator accumulator = new CudaAccumulator(this, device, rows, cols);
            open.add(accumulator);
            return accumulator;
        }
    }

    /** Makes the device's context current on this thread and returns its free memory (for tests and diagnostics). */
    long freeDeviceBytes() {
        synchronized (device) {
            device.makeCurrent();
            return device.freeBytes();
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
        synchronized (device) {
            device.makeCurrent();
            int count = sources.length;
            CUdeviceptr flags = null, rowScales = null, colScales = null;
            try {
                flags = device.alloc(4L * (count + 1), "weightedSum flags");
                device.zero(flags, count + 1);
                rowScales = device.upload(rowScale, "row scales");
                colScales = device.upload(colScale, "column scales");
                CUdeviceptr sums = device.outputSlot();
                for (CudaDevice.Tile tile : device.tiles(rows, cols)) {
                    device.zero(sums, (long) tile.rows() * tile.cols());
                    for (int k = 0; k < count; k++) {
                        Matrix src = sources[k];
                        int r = Math.min(src.rows() - tile.row0(), tile.rows());
                        int c = Math.min(src.cols() - tile.col0(), tile.cols());
                        if (r <= 0 || c <= 0) {
                            continue; // zero-padding: this client holds nothing here
                        }
                        int slot = device.nextInputSlot();
                        CUdeviceptr staged = device.stage(slot, src, tile.row0(), tile.col0(), r, c);
                        device.launch(ACCUMULATE, r, c, sums, tile.cols(), staged, src.dtype().ordinal(), c, r, c,
                                weights[k], offset(flags, k));
                        device.release(slot);
                    }
                    device.launch(FINISH, tile.rows(), tile.cols(), sums, tile.cols(), sums, tile.cols(), tile.rows(),
                            tile.cols(), offset(rowScales, tile.row0()), offset(colScales, tile.col0()),
                            offset(flags, count));
                    device.download(sums, out, cols, tile);
                }
                int[] found = device.readInts(flags, count + 1);
                if (found[count] == 0) {
                    return -1;
                }
                for (int k = 0; k < count; k++) {
                    if (found[k] != 0) {
                        return k;
                    }
                }
                return count; // finite inputs whose weighted sum overflowed
            } finally {
                device.free(flags, rowScales, colScales);
            }
        }
    }

    @Override
    public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) {
        synchronized (device) {
            device.makeCurrent();
            Matrix donorMatrix = donor == null ? null : Matrix.of(donor, rows, cols);
            CUdeviceptr result = device.outputSlot();
            for (CudaDevice.Tile tile : device.tiles(rows, cols)) {
                int r = Math.clamp(src.rows() - tile.row0(), 0, tile.rows());
                int c = Math.clamp(src.cols() - tile.col0(), 0, tile.cols());
                int srcSlot = device.nextInputSlot();
                CUdeviceptr staged = r > 0 && c > 0 ? device.stage(srcSlot, src, tile.row0(), tile.col0(), r, c) : null;
                int donorSlot = 1 - srcSlot;
                CUdeviceptr donorTile = donorMatrix == null ? null
                        : device.stage(donorSlot, donorMatrix, tile.row0(), tile.col0(), tile.rows(), tile.cols());
                device.launch(PAD, tile.rows(), tile.cols(), result, tile.cols(), tile.rows(), tile.cols(), staged,
                        src.dtype().ordinal(), c, r, c, donorTile, tile.cols());
                device.release(srcSlot);
                device.release(donorSlot);
                device.download(result, out, cols, tile);
            }
        }
    }

    @Override
    public boolean allFinite(Matrix src) {
        synchronized (device) {
            device.makeCurrent();
            CUdeviceptr flag = null;
            try {
                flag = device.alloc(4, "allFinite flag");
                device.zero(flag, 1);
                for (CudaDevice.Tile tile : device.tiles(src.rows(), src.cols())) {
                    int slot = device.nextInputSlot();
                    CUdeviceptr staged = device.stage(slot, src, tile.row0(), tile.col0(), tile.rows(), tile.cols());
                    device.launch(ALL_FINITE, tile.rows(), tile.cols(), staged, src.dtype().ordinal(), tile.cols(),
                            tile.rows(), tile.cols(), flag);
                    device.release(slot);
                }
                return device.readInts(flag, 1)[0] == 0;
            } finally {
                device.free(flag);
            }
        }
    }

    /**
     * {@code ||B A||_F^2 = sum((A A^T) .* (B^T B))}: cuBLAS builds both r x r Gram matrices from
     * slot-sized bands (column bands of A, row bands of B, summed with beta = 1), and the host
     * sums their elementwise product in double (r^2 values, not worth a kernel).
     */
    @Override
    public double loraNormSquared(Matrix a, Matrix b) {
        synchronized (device) {
            device.makeCurrent();
            int r = a.rows(), n = a.cols(), m = b.rows();
            if (r > device.slotFloats()) {
                throw new IllegalStateException("rank " + r + " exceeds the CUDA staging slot of " + device.slotFloats()
                        + " floats; the device has too little free memory");
            }
            CUdeviceptr gramA = null, gramB = null;
            try {
                gramA = device.alloc(4L * r * r, "Gram matrix A A^T");
                gramB = device.alloc(4L * r * r, "Gram matrix B^T B");
                // A's row-major [r, w] band is a column-major w x r matrix X: A A^T = X^T X.
                int bandCols = Math.max(1, device.slotFloats() / r);
                for (int c0 = 0; c0 < n; c0 += bandCols) {
                    int w = Math.min(bandCols, n - c0);
                    int slot = device.nextInputSlot();
                    CUdeviceptr x = asFloat(device.stage(slot, a, 0, c0, r, w), a.dtype(), r, w);
                    device.gram(x, w, r, w, true, c0 > 0, gramA);
                    device.release(slot);
                }
                // B's row-major [h, r] band is a column-major r x h matrix Y: B^T B = Y Y^T.
                for (int r0 = 0; r0 < m; r0 += bandCols) {
                    int h = Math.min(bandCols, m - r0);
                    int slot = device.nextInputSlot();
                    CUdeviceptr y = asFloat(device.stage(slot, b, r0, 0, h, r), b.dtype(), h, r);
                    device.gram(y, r, r, h, false, r0 > 0, gramB);
                    device.release(slot);
                }
                float[] aat = device.readFloats(gramA, r * r), btb = device.readFloats(gramB, r * r);
                double sum = 0;
                for (int i = 0; i < aat.length; i++) {
                    sum += (double) aat[i] * btb[i];
                }
                return sum;
            } finally {
                device.free(gramA, gramB);
            }
        }
    }

    /** cuBLAS reads float32 only: a BF16/F16 tile is converted into the output slot first. */
    private CUdeviceptr asFloat(CUdeviceptr staged, DType dtype, int rows, int cols) {
        if (dtype == DType.F32) {
            return staged;
        }
        CUdeviceptr converted = device.outputSlot();
        device.launch(CONVERT, rows, cols, converted, cols, staged, dtype.ordinal(), cols, rows, cols);
        return converted;
    }

    /** Frees the accumulators still open, then everything the device session created. */
    @Override
    public void close() {
        synchronized (device) {
            for (CudaAccumulator accumulator : List.copyOf(open)) {
                accumulator.close();
            }
            device.close();
        }
    }
}
