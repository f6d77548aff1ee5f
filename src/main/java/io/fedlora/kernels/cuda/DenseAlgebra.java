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
 * and only by the operations that need it: the product-space GEMMs and Gram matrices (DESIGN §9).
 * NORM's Gram matrices run on the host (CudaKernels.loraNormSquared). JCublas2's native library needs {@code libcublas.so.12};
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
        cublasHandle blas = handle(operation);
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr da = upload(scope, a, "GEMM A"), db = upload(scope, b, "GEMM B"), dc = upload(scope, c, "GEMM C");
            check(JCublas2.cublasDgemm(blas, transA ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N,
                    transB ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N, m, n, k, Pointer.to(new double[] {alpha}),
                    da, lda, db, ldb, Pointer.to(new double[] {beta}), dc, ldc), "cublasDgemm");
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
        cublasHandle blas = handle(operation);
        try (CudaSession.Scope scope = session.scope()) {
            CUdeviceptr da = upload(scope, a, "SYRK A"), dc = upload(scope, c, "SYRK C");
            check(JCublas2.cublasDsyrk(blas, upper ? cublasFillMode.CUBLAS_FILL_MODE_UPPER : cublasFillMode.CUBLAS_FILL_MODE_LOWER,
                    transA ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N, n, k, Pointer.to(new double[] {alpha}), da,
                    lda, Pointer.to(new double[] {beta}), dc, ldc), "cublasDsyrk");
            return download(dc, c.length);
        }
    }

    private static CUdeviceptr upload(CudaSession.Scope scope, double[] values, String what) {
        CUdeviceptr pointer = scope.alloc((long) values.length * Double.BYTES, what);
        CudaFailure.check(JCudaDriver.cuMemcpyHtoD(pointer, Pointer.to(values), (long) values.length * Double.BYTES),
                "cuMemcpyHtoD(" + what + ")");
        return pointer;
    }

    private double[] download(CUdeviceptr from, int count) {
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
