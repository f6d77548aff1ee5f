package io.fedlora.kernels.cuda;

import io.fedlora.kernels.Kernels;
import io.fedlora.product.GramKernels;
import io.fedlora.product.ProductSpace;
import jcuda.driver.CUdeviceptr;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The product-space Gram kernels (DESIGN §9) on the CUDA backend's device: {@code G = X^T X} by
 * cuBLAS {@code Dsyrk} and the back-projections {@code X * coef} by {@code Dgemm}, float64
 * throughout. Products of two float32 values are exact in float64 and every sum is float64, as on
 * the host kernels; TF32 is not involved (it exists for single-precision routines only; the handle
 * keeps the default math mode, see {@link DenseAlgebra#dgemm}). Sums run in cuBLAS's order, so the
 * results agree with {@code ScalarGram} to float64 rounding, not bit for bit.
 *
 * <p>Each Gram matrix stays on the device while the panels stream in ({@code beta = 1} onto a sum
 * zeroed once) and is downloaded once; each product's rows are written in place into one device
 * result, downloaded once. {@code ProductSpace} feeds one part ({@link #maxParts} = 1): the device
 * serialises its calls anyway, and one part means one device sum (see below on packing threads).
 *
 * <p>Panels cross PCIe as float64, widened on the host by {@code ProductSpace}'s packers (which
 * already produce float64, column scales applied). Uploading the float32 factors and widening on
 * the device would halve the bytes: an SVD at 11008 x 4096, S = 480 sends each stack twice (its
 * Gram, then its product), {@code 2 (m + n) S} = 14.5 M values, 116 MB as float64 against 58 MB
 * as float32, about 2 ms against 1 ms at 55 GB/s. That saving needs a widening kernel in the PTX
 * and a float32 packing path beside the float64 one, while the packing itself bounds the path: one
 * thread packed both stacks of 11008 x 4096, S = 561 in 18-33 ms on the shared build machine
 * (2-4 GB/s of float64 panels, noisy), several times the upload. So: simple first; revisit when
 * {@code bin/gpu-check} has timed upload against packing on a GPU. More parts (packing threads,
 * one device sum each) would cut those milliseconds, but an SVD's time is the host's {@code S^3}
 * work (EJML): 0.6-3.3 CPU-seconds at K = 16 and 228 at K = 100 on the build machine (README), so
 * they are not worth a device sum and a download per part.
 *
 * <p>Loaded by class name from {@code ProductSpace.gramKernelsFor(Kernels, boolean)}
 * ({@link #forBackend}), when the first product-space operation runs. Where {@code libcublas.so.12}
 * is missing, a CUDA backend that was asked for gets these kernels, whose first Gram matrix or
 * product throws an {@link UnsupportedOperationException} naming what is missing before
 * allocating anything; one that {@code auto} chose gets the host kernels and a warning.
 * Device memory per open sum: {@code 8 S^2} bytes plus one panel ({@code 8 * 256 * S}); per open
 * product: {@code 8 (S + length) t} plus one panel. All of it is freed by {@code close}, on every path.
 */
public final class CudaGram implements GramKernels {
    private static final Logger LOG = LoggerFactory.getLogger(CudaGram.class);

    /** How the operation is named in errors (the missing-cuBLAS refusal among them). */
    static final String OPERATION = "product-space Gram matrices (SVD, fidelity)";

    private final CudaSession session;
    private final DenseAlgebra dense;

    /**
     * What {@code ProductSpace.gramKernelsFor(Kernels, boolean)} returns for the CUDA backend: these
     * kernels, or, where cuBLAS cannot load and {@code auto} chose the backend ({@code requested}
     * false), the host ones with one warning naming the cause (checking loads cuBLAS; a backend
     * that was asked for loads it with its first Gram matrix instead).
     */
    public static GramKernels forBackend(Kernels backend, boolean requested) {
        CudaGram device = new CudaGram(backend);
        String cause = requested ? null : DenseAlgebra.unavailabilityCause();
        if (cause == null) {
            return device;
        }
        GramKernels host = ProductSpace.gramKernelsFor("vector");
        LOG.warn("product space: the CUDA backend (chosen by auto) cannot load cuBLAS (libcublas.so.12): {}; the Gram"
                + " matrices of SVD and fidelity run on the {} Gram kernels instead (ask for --backend cuda to make this"
                + " an error)", cause, host.name());
        return host;
    }

    /** The Gram kernels on {@code backend}'s device; it must be the CUDA backend and stay open while they are used. */
    public CudaGram(Kernels backend) {
        if (!(backend instanceof CudaKernels cuda)) {
            throw new IllegalArgumentException("the CUDA Gram kernels need the CUDA backend, got '" + backend.name() + "'");
        }
        this.session = cuda.session();
        this.dense = cuda.dense();
    }

    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public int maxParts() {
        return 1;
    }

    /** One panel through a device sum of its own: for the SPI's completeness and tests; ProductSpace uses {@link #openGram}. */
    @Override
    public void syrkUpper(double[] gram, double[] x, int rows, int s) {
        try (GramSum sum = openGram(s)) {
            sum.add(x, rows);
            double[] upper = sum.upper();
            for (int p = 0; p < s; p++) {
                for (int q = p; q < s; q++) {
                    gram[p * s + q] += upper[p * s + q];
                }
            }
        }
    }

    /** One panel through a device product of its own; ProductSpace uses {@link #openProduct}. */
    @Override
    public void gemm(double[] out, double[] x, int rows, int s, double[] coef, int t) {
        if (rows == 0 || t == 0) {
            return;
        }
        try (PanelProduct product = openProduct(rows, s, coef, t)) {
            product.add(x, 0, rows);
            System.arraycopy(product.result(), 0, out, 0, rows * t);
        }
    }

    @Override
    public GramSum openGram(int s) {
        synchronized (session) {
            return new DeviceGramSum(s);
        }
    }

    @Override
    public PanelProduct openProduct(int length, int s, double[] coef, int t) {
        synchronized (session) {
            return new DeviceProduct(length, s, coef, t);
        }
    }

    /**
     * What a device sum or product owns: its buffers (one scope) and a panel buffer that grows to
     * the largest panel seen. Every method takes the session lock and makes the context current.
     */
    private abstract class DeviceOperation implements AutoCloseable {
        final int s;
        final CudaSession.Scope scope;
        private CUdeviceptr panel;
        private long panelDoubles;
        private boolean closed;

        /** Loads cuBLAS (or refuses, naming what is missing) before anything is allocated. Call under the lock. */
        DeviceOperation(int s) {
            if (s < 1) {
                throw new IllegalArgumentException("stack rank must be >= 1, got " + s);
            }
            this.s = s;
            session.makeCurrent();
            dense.require(OPERATION);
            this.scope = session.scope();
        }

        /** Frees what the constructor allocated before it failed, keeping its error first. */
        final RuntimeException failed(RuntimeException e) {
            try {
                release();
            } catch (RuntimeException suppressed) {
                e.addSuppressed(suppressed);
            }
            return e;
        }

        /** Uploads rows {@code 0 .. rows} of the panel {@code x} (row stride s). Call under the lock. */
        final CUdeviceptr upload(double[] x, int rows) {
            long count = (long) rows * s;
            if (count > x.length) {
                throw new IllegalArgumentException("panel of " + rows + " rows x " + s + " needs " + count
                        + " values, the array holds " + x.length);
            }
            if (panel == null || panelDoubles < count) {
                if (panel != null) {
                    CUdeviceptr old = panel;
                    panel = null;
                    session.free(old);
                }
                long doubles = Math.max(count, x.length);
                panel = session.alloc(doubles * Double.BYTES, "product-space panel (" + doubles + " float64)");
                panelDoubles = doubles;
            }
            DenseAlgebra.copyIn(panel, x, (int) count, "product-space panel");
            return panel;
        }

        final void checkOpen() {
            if (closed) {
                throw new IllegalStateException("the device " + what() + " is closed");
            }
        }

        abstract String what();

        private void release() {
            CudaSession.Teardown teardown = new CudaSession.Teardown();
            if (panel != null) {
                CUdeviceptr old = panel;
                panel = null;
                teardown.run(() -> session.free(old));
            }
            teardown.run(scope::close);
            teardown.rethrow();
        }

        @Override
        public final void close() {
            synchronized (session) {
                if (closed) {
                    return;
                }
                closed = true;
                session.makeCurrent();
                release();
            }
        }
    }

    private final class DeviceGramSum extends DeviceOperation implements GramSum {
        private final CUdeviceptr gram;

        /** Under the session lock (openGram). */
        DeviceGramSum(int s) {
            super(s);
            try {
                gram = scope.alloc(8L * s * s, "Gram matrix (" + s + " x " + s + " float64)");
                session.zero(gram, 2L * s * s); // 32-bit words; all-zero bits are 0.0
            } catch (RuntimeException e) {
                throw failed(e);
            }
        }

        @Override
        String what() {
            return "Gram sum";
        }

        @Override
        public void add(double[] x, int rows) {
            if (rows == 0) {
                return;
            }
            synchronized (session) {
                checkOpen();
                session.makeCurrent();
                CUdeviceptr p = upload(x, rows);
                // The row-major rows x s panel is the column-major s x rows matrix P, and P P^T = X^T X.
                // cuBLAS's column-major lower triangle (i >= j at i + j s) is the row-major upper one
                // ([p * s + q], q >= p) that ProductSpace reads; beta = 1 sums onto the earlier panels.
                dense.dsyrk(OPERATION, false, false, s, rows, 1.0, p, s, 1.0, gram, s);
            }
        }

        @Override
        public double[] upper() {
            synchronized (session) {
                checkOpen();
                session.makeCurrent();
                return dense.download(gram, s * s);
            }
        }
    }

    private final class DeviceProduct extends DeviceOperation implements PanelProduct {
        private final int length, t;
        private final CUdeviceptr coef, out;

        /** Under the session lock (openProduct). */
        DeviceProduct(int length, int s, double[] coefficients, int t) {
            if (t < 1 || length < 1 || coefficients.length < (long) s * t) {
                throw new IllegalArgumentException("product of " + length + " x " + s + " by " + s + " x " + t
                        + " with " + coefficients.length + " coefficients");
            }
            super(s);
            this.length = length;
            this.t = t;
            try {
                coef = scope.alloc(8L * s * t, "product-space coefficients (" + s + " x " + t + " float64)");
                DenseAlgebra.copyIn(coef, coefficients, s * t, "product-space coefficients");
                out = scope.alloc(8L * length * t, "product-space result (" + length + " x " + t + " float64)");
            } catch (RuntimeException e) {
                throw failed(e);
            }
        }

        @Override
        String what() {
            return "product";
        }

        @Override
        public void add(double[] x, int first, int rows) {
            if (rows == 0) {
                return;
            }
            if (first < 0 || first + rows > length) {
                throw new IllegalArgumentException("rows " + first + " .. " + (first + rows) + " outside 0 .. " + length);
            }
            synchronized (session) {
                checkOpen();
                session.makeCurrent();
                CUdeviceptr p = upload(x, rows);
                // Row-major Y = X C (rows x t) is column-major Y^T = C^T X^T: C^T is the coefficients as
                // stored (t x s, ld t), X^T the panel (s x rows, ld s), and Y^T's columns are the
                // result's rows first .. first + rows, contiguous at first * t (ld t).
                dense.dgemm(OPERATION, false, false, t, rows, s, 1.0, coef, t, p, s, 0.0,
                        out.withByteOffset(8L * first * t), t);
            }
        }

        @Override
        public double[] result() {
            synchronized (session) {
                checkOpen();
                session.makeCurrent();
                return dense.download(out, length * t);
            }
        }
    }
}
