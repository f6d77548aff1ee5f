// libcublas.so.12 of the fedlora device emulator: the cuBLAS calls the CUDA backend makes
// (through JCublas2), on the emulated device of libcuda.so.1. Column-major, as cuBLAS.
#include "emu.h"

#include <cmath>
#include <cstdio>
#include <set>

using namespace fedlora_emu;

namespace {

enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
};
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 };
enum { CUBLAS_POINTER_MODE_HOST = 0 };

struct Handle {
    CUstream stream;
};
std::set<Handle*> handles;

// A CUresult from the emulator as the cuBLAS status a real library would give for it.
int status_of(int result)
{
    return result == CUDA_SUCCESS ? CUBLAS_STATUS_SUCCESS
           : result == CUDA_ERROR_INVALID_VALUE ? CUBLAS_STATUS_INVALID_VALUE
                                                : CUBLAS_STATUS_EXECUTION_FAILED;
}

// A column-major rows x cols operand with leading dimension ld must lie in device memory.
template <typename T>
int check_matrix(const T* data, int rows, int cols, int ld, const char* what)
{
    if (rows == 0 || cols == 0) {
        return CUDA_SUCCESS;
    }
    size_t bytes = (static_cast<size_t>(cols - 1) * ld + rows) * sizeof(T);
    return check_device_range(reinterpret_cast<CUdeviceptr>(data), bytes, what);
}

}  // namespace

#define LOCKED std::lock_guard<std::recursive_mutex> guard(big_lock())
#define EXPORT __attribute__((visibility("default")))

extern "C" {

EXPORT int cublasCreate_v2(Handle** handle)
{
    LOCKED;
    if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    if (check_context() != CUDA_SUCCESS) {
        report(CUDA_ERROR_INVALID_CONTEXT, "cublasCreate: no usable CUDA context is current");
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    *handle = new Handle{nullptr};
    handles.insert(*handle);
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT int cublasDestroy_v2(Handle* handle)
{
    LOCKED;
    if (handles.erase(handle) == 0) {
        report(CUDA_ERROR_INVALID_HANDLE, "cublasDestroy: not a live cuBLAS handle");
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    flush();
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT int cublasGetVersion_v2(Handle* handle, int* version)
{
    (void) handle;
    if (version == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    *version = 120000;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT int cublasSetStream_v2(Handle* handle, CUstream stream)
{
    LOCKED;
    if (handles.count(handle) == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT int cublasSetPointerMode_v2(Handle* handle, int mode)
{
    if (mode != CUBLAS_POINTER_MODE_HOST) {
        report(CUDA_ERROR_NOT_SUPPORTED, "cublasSetPointerMode: only CUBLAS_POINTER_MODE_HOST is emulated");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return handles.count(handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

// C = alpha op(A) op(B) + beta C, all column-major; op(A) is m x k, op(B) k x n, C m x n.
// Float32 with one FMA per product, in k order, as a plain (untiled) GEMM would; a real cuBLAS
// sums in another order, so results agree to rounding, not bit for bit. beta == 0 means C is
// not read (it may hold NaN), as cuBLAS documents.
EXPORT int cublasSgemm_v2(Handle* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                          const float* a, int lda, const float* b, int ldb, const float* beta, float* c, int ldc)
{
    LOCKED;
    if (handles.count(handle) == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    if ((transa != CUBLAS_OP_N && !ta) || (transb != CUBLAS_OP_N && !tb) || m < 0 || n < 0 || k < 0
        || alpha == nullptr || beta == nullptr || lda < (ta ? k : m) || lda < 1 || ldb < (tb ? n : k) || ldb < 1
        || ldc < m || ldc < 1) {
        report(CUDA_ERROR_INVALID_VALUE, "cublasSgemm: invalid arguments (op %d/%d, m %d, n %d, k %d, lda %d, ldb %d, ldc %d)",
               transa, transb, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int result = check_context();
    if (result == CUDA_SUCCESS) result = check_matrix(a, ta ? k : m, ta ? m : k, lda, "cublasSgemm A");
    if (result == CUDA_SUCCESS) result = check_matrix(b, tb ? n : k, tb ? k : n, ldb, "cublasSgemm B");
    if (result == CUDA_SUCCESS) result = check_matrix(c, m, n, ldc, "cublasSgemm C");
    if (result != CUDA_SUCCESS) return status_of(result);
    float alpha_value = *alpha, beta_value = *beta;  // host pointer mode: read at the call
    result = submit(handle->stream, "cublasSgemm", [=]() {
        for (int col = 0; col < n; col++) {
            for (int row = 0; row < m; row++) {
                float sum = 0.0f;
                for (int p = 0; p < k; p++) {
                    float left = ta ? a[row * static_cast<long>(lda) + p] : a[p * static_cast<long>(lda) + row];
                    float right = tb ? b[p * static_cast<long>(ldb) + col] : b[col * static_cast<long>(ldb) + p];
                    sum = fmaf(left, right, sum);
                }
                float* out = c + col * static_cast<long>(ldc) + row;
                *out = beta_value == 0.0f ? alpha_value * sum : fmaf(beta_value, *out, alpha_value * sum);
            }
        }
        return check_guards("cublasSgemm");
    });
    return status_of(result);
}

// The double-precision GEMM of the product-space algebra (DESIGN §9): as cublasSgemm, in double
// with one FMA per product in k order.
EXPORT int cublasDgemm_v2(Handle* handle, int transa, int transb, int m, int n, int k, const double* alpha,
                          const double* a, int lda, const double* b, int ldb, const double* beta, double* c, int ldc)
{
    LOCKED;
    if (handles.count(handle) == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    if ((transa != CUBLAS_OP_N && !ta) || (transb != CUBLAS_OP_N && !tb) || m < 0 || n < 0 || k < 0
        || alpha == nullptr || beta == nullptr || lda < (ta ? k : m) || lda < 1 || ldb < (tb ? n : k) || ldb < 1
        || ldc < m || ldc < 1) {
        report(CUDA_ERROR_INVALID_VALUE, "cublasDgemm: invalid arguments (op %d/%d, m %d, n %d, k %d, lda %d, ldb %d, ldc %d)",
               transa, transb, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int result = injected_failure("cublasDgemm");
    if (result == CUDA_SUCCESS) result = check_context();
    if (result == CUDA_SUCCESS) result = check_matrix(a, ta ? k : m, ta ? m : k, lda, "cublasDgemm A");
    if (result == CUDA_SUCCESS) result = check_matrix(b, tb ? n : k, tb ? k : n, ldb, "cublasDgemm B");
    if (result == CUDA_SUCCESS) result = check_matrix(c, m, n, ldc, "cublasDgemm C");
    if (result != CUDA_SUCCESS) return status_of(result);
    double alpha_value = *alpha, beta_value = *beta;
    result = submit(handle->stream, "cublasDgemm", [=]() {
        for (int col = 0; col < n; col++) {
            for (int row = 0; row < m; row++) {
                double sum = 0.0;
                for (int p = 0; p < k; p++) {
                    double left = ta ? a[row * static_cast<long>(lda) + p] : a[p * static_cast<long>(lda) + row];
                    double right = tb ? b[p * static_cast<long>(ldb) + col] : b[col * static_cast<long>(ldb) + p];
                    sum = std::fma(left, right, sum);
                }
                double* out = c + col * static_cast<long>(ldc) + row;
                *out = beta_value == 0.0 ? alpha_value * sum : std::fma(beta_value, *out, alpha_value * sum);
            }
        }
        return check_guards("cublasDgemm");
    });
    return status_of(result);
}

// C = alpha op(A) op(A)^T + beta C on the uplo triangle of the n x n C only (the other triangle is
// not touched, as cuBLAS documents); op(A) is n x k: A itself (trans N) or A^T (trans T).
EXPORT int cublasDsyrk_v2(Handle* handle, int uplo, int trans, int n, int k, const double* alpha, const double* a,
                          int lda, const double* beta, double* c, int ldc)
{
    LOCKED;
    if (handles.count(handle) == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool t = trans == CUBLAS_OP_T, upper = uplo == CUBLAS_FILL_MODE_UPPER;
    if ((trans != CUBLAS_OP_N && !t) || (uplo != CUBLAS_FILL_MODE_LOWER && !upper) || n < 0 || k < 0 || alpha == nullptr
        || beta == nullptr || lda < (t ? k : n) || lda < 1 || ldc < n || ldc < 1) {
        report(CUDA_ERROR_INVALID_VALUE, "cublasDsyrk: invalid arguments (uplo %d, op %d, n %d, k %d, lda %d, ldc %d)", uplo,
               trans, n, k, lda, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int result = injected_failure("cublasDsyrk");
    if (result == CUDA_SUCCESS) result = check_context();
    if (result == CUDA_SUCCESS) result = check_matrix(a, t ? k : n, t ? n : k, lda, "cublasDsyrk A");
    if (result == CUDA_SUCCESS) result = check_matrix(c, n, n, ldc, "cublasDsyrk C");
    if (result != CUDA_SUCCESS) return status_of(result);
    double alpha_value = *alpha, beta_value = *beta;
    result = submit(handle->stream, "cublasDsyrk", [=]() {
        for (int col = 0; col < n; col++) {
            for (int row = upper ? 0 : col; row <= (upper ? col : n - 1); row++) {
                double sum = 0.0;
                for (int p = 0; p < k; p++) {
                    double left = t ? a[row * static_cast<long>(lda) + p] : a[p * static_cast<long>(lda) + row];
                    double right = t ? a[col * static_cast<long>(lda) + p] : a[p * static_cast<long>(lda) + col];
                    sum = std::fma(left, right, sum);
                }
                double* out = c + col * static_cast<long>(ldc) + row;
                *out = beta_value == 0.0 ? alpha_value * sum : std::fma(beta_value, *out, alpha_value * sum);
            }
        }
        return check_guards("cublasDsyrk");
    });
    return status_of(result);
}

}  // extern "C"
