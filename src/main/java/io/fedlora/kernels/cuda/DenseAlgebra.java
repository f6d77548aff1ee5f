package io.fedlora.kernels.cuda;

import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.jcublas.JCublas2;
import jcuda.driver.JCudaDriver;
import jcuda.jcublas.cublasFillMode;
import jcuda.jcublas.cublasHandle;
import jcuda.jcublas.cublasOperation;
import jcuda.jcublas.cublasStatus;
import jcuda.runtime.cudaStream_t;

/**
 * The dense linear algebra of the CUDA backend (cuBLAS through JCublas2), loaded on first use
 * and only by the operations that need it: the product-space Grams and back-projections (DESIGN
 * §9, {@link CudaGram}); NORM's Gram matrices run on the host (CudaKernels.loraNormSquared).
 * JCublas2's native library needs {@code libcublas.so.12};
 * where it is missing (a driver-only GPU container) every other operation still runs on CUDA and
 * an operation that needs this class fails with an {@link UnsupportedOperationException} saying
 * what is missing. All JCublas2 references live here, so that loading the rest of the backend
 * never loads cuBLAS.
 */
final class DenseAlgebra implements AutoCloseable {

    /** Loads JCublas2 (and with it libcublas.so.12) once per JVM, on first use. */
    private static final class Library {
        static final String CAUSE = load();

        private static String load() {
            try {
                JCublas2.initialize();
                return null;
            } catch (Throwable t) { // UnsatisfiedLinkError, NoClassDefFoundError
                return CudaProbe.loaderChain(t);
            }
        }
    }

    private final CudaSession session;
    private cublasHandle handle;

    DenseAlgebra(CudaSession session) {
        this.session = session;
    }

    /** Null when cuBLAS loads here, else why not; loads it on the first call. */
    static String unavailabilityCause() {
        return Library.CAUSE;
    }

    /** The handle, created on first use on the compute stream, or UnsupportedOperationException naming the operation and what is missing. */
    private cublasHandle handle(String operation) {
        String cause = Library.CAUSE;
        if (cause != null) {
            throw new UnsupportedOperationException("the CUDA backend's " + operation + " needs cuBLAS (libcublas.so.12), which"
                    + " could not be loaded: " + cause + "; install the CUDA 12 cuBLAS library (the toolkit's libcublas, or"
                    + " pip's nvidia-cublas-cu12) on the library path, or use the vector backend");
        }
        if (handle == null) {
            cublasHandle created = new cublasHandle();
            check(JCublas2.cublasCreate(created), "cublasCreate");
            try {
                check(JCublas2.cublasSetStream(created, new cudaStream_t(session.computeStream())), "cublasSetStream");
            } catch (RuntimeException e) {
                int destroyed = JCublas2.cublasDestroy(created);
                if (destroyed != cublasStatus.CUBLAS_STATUS_SUCCESS) {
                    e.addSuppressed(new IllegalStateException("cublasDestroy failed: " + cublasStatus.stringFor(destroyed)));
                }
                throw e;
            }
            handle = created;
        }
        return handle;
    }

    private static void check(int status, String call) {
        if (status != cublasStatus.CUBLAS_STATUS_SUCCESS) {
            throw new IllegalStateException(call + " failed: " + cublasStatus.stringFor(status));
        }
    }

    /**
     * {@code C = alpha op(A) op(B) + beta C} in float64, column-major host arrays (op(A) is
     * {@code m x k}, op(B) {@code k x n}, C {@code m x n}); returns C. For the product-space
     * algebra (DESIGN §9: stacked Gram blocks, the SVD's back-projections), whose float64 accuracy
     * the float32 kernels cannot give. Synchronous: uploads, runs, downloads.
     */
    double[] gemm(String operation, boolean transA, boolean transB, int m, int n, int k, double alpha, double[] a, int lda,
            double[] b, int ldb, double beta, double[] c, int ldc) {
        handle(operation);
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr da = upload(scope, a, "GEMM A"), db = upload(scope, b, "GEMM B"), dc = upload(scope, c, "GEMM C");
            dgemm(operation, transA, transB, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
            return download(dc, c.length);
        }
    }

    /**
     * {@code C = alpha op(A) op(A)^T + beta C} on the {@code upper} (else lower) triangle of the
     * {@code n x n} C, float64, column-major host arrays; op(A) is {@code n x k} (A, or A^T when
     * {@code transA}). The other triangle is returned as given. The Gram matrices {@code As As^T}
     * and {@code Bs^T Bs} of DESIGN §9 are exactly this.
     */
    double[] syrk(String operation, boolean upper, boolean transA, int n, int k, double alpha, double[] a, int lda, double beta,
            double[] c, int ldc) {
        handle(operation);
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr da = upload(scope, a, "SYRK A"), dc = upload(scope, c, "SYRK C");
            dsyrk(operation, upper, transA, n, k, alpha, da, lda, beta, dc, ldc);
            return download(dc, c.length);
        }
    }

    /**
     * {@link #gemm} on device memory, queued on the compute stream. Float64 throughout: the handle
     * keeps CUBLAS_DEFAULT_MATH (no math mode is ever set here), under which the D-routines compute
     * in IEEE float64 (FP64 units or FP64 tensor cores); TF32 (CUBLAS_TF32_TENSOR_OP_MATH) applies
     * to single-precision routines only, and newer cuBLAS's FP64 emulation is an opt-in math mode.
     */
    void dgemm(String operation, boolean transA, boolean transB, int m, int n, int k, double alpha, CUdeviceptr a, int lda,
            CUdeviceptr b, int ldb, double beta, CUdeviceptr c, int ldc) {
        check(JCublas2.cublasDgemm(handle(operation), transA ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N,
                transB ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N, m, n, k, Pointer.to(new double[] {alpha}),
                a, lda, b, ldb, Pointer.to(new double[] {beta}), c, ldc), "cublasDgemm");
    }

    /** {@link #syrk} on device memory, queued on the compute stream (float64, no TF32: see {@link #dgemm}). */
    void dsyrk(String operation, boolean upper, boolean transA, int n, int k, double alpha, CUdeviceptr a, int lda, double beta,
            CUdeviceptr c, int ldc) {
        check(JCublas2.cublasDsyrk(handle(operation), upper ? cublasFillMode.CUBLAS_FILL_MODE_UPPER
                : cublasFillMode.CUBLAS_FILL_MODE_LOWER, transA ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N, n, k,
                Pointer.to(new double[] {alpha}), a, lda, Pointer.to(new double[] {beta}), c, ldc), "cublasDsyrk");
    }

    private static CUdeviceptr upload(CudaSession.Scope scope, double[] values, String what) {
        CUdeviceptr pointer = scope.alloc((long) values.length * Double.BYTES, what);
        copyIn(pointer, values, values.length, what);
        return pointer;
    }

    /**
     * The first {@code count} values into device memory. A synchronous copy on the legacy stream:
     * it waits for the earlier work of the session's blocking streams (a cuBLAS call still reading
     * the buffer) and later compute-stream work waits for it, so a buffer can be refilled at once.
     */
    static void copyIn(CUdeviceptr to, double[] values, int count, String what) {
        CudaFailure.check(JCudaDriver.cuMemcpyHtoD(to, Pointer.to(values), (long) count * Double.BYTES),
                "cuMemcpyHtoD(" + what + ")");
    }

    /** {@code count} doubles from device memory, after the work queued so far. */
    double[] download(CUdeviceptr from, int count) {
        double[] values = new double[count];
        session.synchronize();
        CudaFailure.check(JCudaDriver.cuMemcpyDtoH(Pointer.to(values), from, (long) count * Double.BYTES), "cuMemcpyDtoH");
        return values;
    }

    /** Makes sure cuBLAS is there before an operation allocates anything for it. */
    void require(String operation) {
        handle(operation);
    }

    @Override
    public void close() {
        if (handle != null) {
            cublasHandle created = handle;
            handle = null;
            check(JCublas2.cublasDestroy(created), "cublasDestroy");
        }
    }
}
