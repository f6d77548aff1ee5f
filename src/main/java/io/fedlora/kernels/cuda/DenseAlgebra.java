package io.fedlora.kernels.cuda;

import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasHandle;
import jcuda.jcublas.cublasOperation;
import jcuda.jcublas.cublasStatus;
import jcuda.runtime.cudaStream_t;

/**
 * The dense linear algebra of the CUDA backend (cuBLAS through JCublas2), loaded on first use
 * and only by the operations that need it: the Gram matrices behind NORM weights today, the
 * product-space GEMMs (DESIGN §9) next. JCublas2's native library needs {@code libcublas.so.12};
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
     * C (r x r, column-major) = X^T X when {@code transposeFirst}, else X X^T, plus C when
     * {@code accumulate}, where X is column-major with leading dimension ld: {@code inner x r}
     * or {@code r x inner}. Queued on the compute stream, float32 (the kernels' data type).
     */
    void gram(String operation, CUdeviceptr x, int ld, int r, int inner, boolean transposeFirst, boolean accumulate, CUdeviceptr c) {
        cublasHandle blas = handle(operation);
        Pointer one = Pointer.to(new float[] {1f});
        Pointer beta = Pointer.to(new float[] {accumulate ? 1f : 0f});
        int first = transposeFirst ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N;
        int second = transposeFirst ? cublasOperation.CUBLAS_OP_N : cublasOperation.CUBLAS_OP_T;
        check(JCublas2.cublasSgemm(blas, first, second, r, r, inner, one, x, ld, x, ld, beta, c, r), "cublasSgemm");
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
