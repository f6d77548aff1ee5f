/* The device emulator's own tests: run by `make -C native test`, one process, no JVM.
 * Each test provokes one behaviour on purpose and checks both the CUresult and the message. */
#include "cuda_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(condition, ...)                                                   \
    do {                                                                         \
        if (!(condition)) {                                                      \
            failures++;                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
        }                                                                        \
    } while (0)
#define OK(call) EXPECT((call) == CUDA_SUCCESS, "%s failed: %s", #call, fedlora_emu_last_error())
#define FAILS_WITH(code, call, fragment)                                                        \
    do {                                                                                         \
        CUresult result_ = (call);                                                               \
        EXPECT(result_ == (code), "%s returned %d, expected %d", #call, result_, (code));        \
        EXPECT(strstr(fedlora_emu_last_error(), fragment) != NULL, "message \"%s\" lacks \"%s\"", \
               fedlora_emu_last_error(), fragment);                                              \
    } while (0)

static char* read_file(const char* path)
{
    FILE* file = fopen(path, "rb");
    if (file == NULL) {
        perror(path);
        exit(2);
    }
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    char* text = calloc((size_t) size + 1, 1);
    if (fread(text, 1, (size_t) size, file) != (size_t) size) exit(2);
    fclose(file);
    return text;
}

static CUresult launch_accumulate(CUfunction f, CUstream stream, CUdeviceptr sums, int sumsLd, CUdeviceptr src,
                                  int rows, int cols, float weight, CUdeviceptr flag)
{
    int dtype = 0, srcLd = cols;
    void* params[] = {&sums, &sumsLd, &src, &dtype, &srcLd, &rows, &cols, &weight, &flag};
    return cuLaunchKernel(f, 2, 2, 1, 4, 3, 1, 0, stream, params, NULL);
}

int main(int argc, char** argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: emu_test PTX_FILE\n");
        return 2;
    }
    setenv("FEDLORA_EMU_MEMORY", "64K", 1);
    setenv("FEDLORA_EMU_QUIET", "1", 1); /* every error below is provoked; the checks read the message */
    CUdevice device;
    CUcontext primary;
    OK(cuInit(0));
    OK(cuDeviceGet(&device, 0));
    OK(cuDevicePrimaryCtxRetain(&primary, device));
    OK(cuCtxSetCurrent(primary));

    /* Memory size from FEDLORA_EMU_MEMORY; running out is CUDA_ERROR_OUT_OF_MEMORY. */
    size_t free_bytes, total_bytes;
    OK(cuMemGetInfo_v2(&free_bytes, &total_bytes));
    EXPECT(total_bytes == 65536 && free_bytes == 65536, "total %zu free %zu", total_bytes, free_bytes);
    CUdeviceptr big;
    FAILS_WITH(CUDA_ERROR_OUT_OF_MEMORY, cuMemAlloc_v2(&big, 65537), "out of emulated device memory");

    /* Round trip, and copies that go out of bounds or use a bad pointer. */
    float host[16], back[16];
    for (int k = 0; k < 16; k++) host[k] = (float) k;
    CUdeviceptr buffer;
    OK(cuMemAlloc_v2(&buffer, sizeof host));
    OK(cuMemcpyHtoD_v2(buffer, host, sizeof host));
    OK(cuMemcpyDtoH_v2(back, buffer, sizeof back));
    EXPECT(memcmp(host, back, sizeof host) == 0, "round trip changed the data");
    FAILS_WITH(CUDA_ERROR_INVALID_VALUE, cuMemcpyHtoD_v2(buffer + 8, host, sizeof host), "out of bounds");
    FAILS_WITH(CUDA_ERROR_INVALID_VALUE, cuMemcpyDtoH_v2(back, (CUdeviceptr) (size_t) host, 4), "not device memory");

    /* Fresh device memory is NaN, never zero by luck. */
    CUdeviceptr fresh;
    float first;
    OK(cuMemAlloc_v2(&fresh, 4));
    OK(cuMemcpyDtoH_v2(&first, fresh, 4));
    EXPECT(isnan(first), "fresh memory read %g", first);
    OK(cuMemFree_v2(fresh));
    FAILS_WITH(CUDA_ERROR_INVALID_VALUE, cuMemFree_v2(fresh), "double free");

    /* Module: the committed PTX loads; a newer ISA or an unknown kernel does not. */
    char* ptx = read_file(argv[1]);
    CUmodule module;
    CUfunction accumulate, missing;
    OK(cuModuleLoadData(&module, ptx));
    OK(cuModuleGetFunction(&accumulate, module, "fedlora_accumulate"));
    FAILS_WITH(CUDA_ERROR_NOT_FOUND, cuModuleGetFunction(&missing, module, "fedlora_nothing"), "no kernel");
    char* newer = strdup(ptx);
    memcpy(strstr(newer, ".version ") + 9, "9.0", 3);
    CUmodule rejected;
    FAILS_WITH(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, cuModuleLoadData(&rejected, newer), "PTX ISA 9.0");
    const char* unknown = ".version 7.8\n.target sm_75\n.address_size 64\n.visible .entry fedlora_unknown(\n.param .u64 p\n)\n{\nret;\n}\n";
    FAILS_WITH(CUDA_ERROR_NOT_SUPPORTED, cuModuleLoadData(&rejected, unknown), "no host implementation");
    /* A parameter whose PTX size differs from the C++ signature is refused, and the JIT log says why. */
    char* narrowed = strdup(ptx);
    char* entry = strstr(narrowed, ".entry fedlora_accumulate(");
    EXPECT(entry != NULL, "no fedlora_accumulate in the PTX");
    if (entry != NULL) {
        char* first_param = strstr(entry, ".param .u64");
        memcpy(first_param, ".param .u32", 11);
        char log[256] = "";
        int options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
        void* values[] = {log, (void*) (size_t) sizeof log};
        FAILS_WITH(CUDA_ERROR_INVALID_PTX, cuModuleLoadDataEx(&rejected, narrowed, 2, options, values),
                   "parameter 0 is 4 bytes, the emulator's C++ signature has 8");
        EXPECT(strstr(log, "parameter 0 is 4 bytes") != NULL, "JIT error log \"%s\"", log);
    }
    free(narrowed);

    /* A launch on a stream runs at the next synchronisation, from arguments copied at launch. */
    CUstream stream;
    OK(cuStreamCreate(&stream, 0));
    float* pinned;
    OK(cuMemHostAlloc((void**) &pinned, sizeof host, 0));
    CUdeviceptr sums, src;
    OK(cuMemAlloc_v2(&sums, 12 * sizeof(float)));
    OK(cuMemAlloc_v2(&src, 12 * sizeof(float)));
    OK(cuMemsetD32_v2(sums, 0, 12));
    for (int k = 0; k < 12; k++) pinned[k] = (float) k;
    unsigned long long async_before = fedlora_emu_htod_bytes(1), sync_before = fedlora_emu_htod_bytes(0);
    OK(cuMemcpyHtoDAsync_v2(src, pinned, 12 * sizeof(float), stream));
    /* The host-to-device counters (the tests' "each client crosses once") count accepted copies by kind. */
    EXPECT(fedlora_emu_htod_bytes(1) - async_before == 48, "async bytes %llu", fedlora_emu_htod_bytes(1) - async_before);
    EXPECT(fedlora_emu_htod_bytes(0) == sync_before, "a queued copy counted as synchronous");
    OK(launch_accumulate(accumulate, stream, sums, 4, src, 3, 4, 2.0f, 0));
    OK(launch_accumulate(accumulate, stream, sums, 4, src, 3, 4, 0.5f, 0));
    OK(cuMemcpyDtoHAsync_v2(pinned, sums, 12 * sizeof(float), stream));
    OK(cuStreamSynchronize(stream));
    for (int k = 0; k < 12; k++) EXPECT(pinned[k] == fmaf(0.5f, (float) k, fmaf(2.0f, (float) k, 0.0f)), "sums[%d] = %g", k, pinned[k]);

    /* Streams are queues with recorded dependencies, and synchronisation runs only what it must. */
    {
        CUstream other, loose;
        CUevent first, second, legacy;
        OK(cuStreamCreate(&other, 0));
        OK(cuStreamCreate(&loose, 1 /* CU_STREAM_NON_BLOCKING */));
        OK(cuEventCreate(&first, 0));
        OK(cuEventCreate(&second, 0));
        OK(cuEventCreate(&legacy, 0));
        OK(cuMemsetD32Async(sums, 0, 12, stream));
        OK(cuEventRecord(first, stream));
        OK(cuMemsetD32Async(src, 0, 12, other));
        OK(cuEventRecord(second, other));
        EXPECT(cuEventQuery(first) == CUDA_ERROR_NOT_READY, "queued work ran before anything waited for it");
        OK(cuEventSynchronize(first));
        EXPECT(cuEventQuery(second) == CUDA_ERROR_NOT_READY, "cuEventSynchronize ran work of an unrelated stream");
        /* A wait makes the other stream's later work depend on the event's work. */
        OK(cuMemsetD32Async(src, 0, 12, loose));
        OK(cuEventRecord(first, loose));
        OK(cuStreamWaitEvent(other, first, 0));
        OK(cuEventRecord(second, other));
        OK(cuEventSynchronize(second));
        EXPECT(cuEventQuery(first) == CUDA_SUCCESS, "cuStreamWaitEvent did not order the streams");
        /* The legacy stream waits for blocking streams, not for non-blocking ones. */
        OK(cuMemsetD32Async(src, 0, 12, other));
        OK(cuEventRecord(second, other));
        OK(cuMemsetD32Async(src, 0, 12, loose));
        OK(cuEventRecord(first, loose));
        OK(cuMemsetD32Async(sums, 0, 12, NULL));
        OK(cuEventRecord(legacy, NULL));
        OK(cuEventSynchronize(legacy));
        EXPECT(cuEventQuery(second) == CUDA_SUCCESS, "the legacy stream did not wait for a blocking stream");
        EXPECT(cuEventQuery(first) == CUDA_ERROR_NOT_READY, "the legacy stream waited for a non-blocking stream");
        OK(cuStreamSynchronize(loose));
        OK(cuEventDestroy_v2(first));
        OK(cuEventDestroy_v2(second));
        OK(cuEventDestroy_v2(legacy));
        OK(cuStreamDestroy_v2(other));
        OK(cuStreamDestroy_v2(loose));
    }

    /* Failure injection: the nth next call fails once. */
    fedlora_emu_fail("cuMemAlloc", 2);
    CUdeviceptr injected;
    OK(cuMemAlloc_v2(&injected, 4));
    FAILS_WITH(CUDA_ERROR_UNKNOWN, cuMemAlloc_v2(&big, 4), "failure injected");
    OK(cuMemFree_v2(injected));
    EXPECT(fedlora_emu_fail("cuMemAlloc", 0) == 0, "the armed failure did not fire");
    /* buffer, pinned, sums, src; the stream; the module */
    EXPECT(fedlora_emu_live_objects() == 6, "live objects %d", fedlora_emu_live_objects());

    /* A host pointer as a kernel argument is refused at launch. */
    CUdeviceptr wild = (CUdeviceptr) (size_t) host;
    FAILS_WITH(CUDA_ERROR_INVALID_VALUE, launch_accumulate(accumulate, stream, wild, 4, src, 3, 4, 1.0f, 0), "argument 0");

    OK(cuStreamDestroy_v2(stream));
    OK(cuMemFreeHost(pinned));
    OK(cuMemFree_v2(sums));
    OK(cuMemFree_v2(src));
    OK(cuMemFree_v2(buffer));
    OK(cuModuleUnload(module));
    OK(cuDevicePrimaryCtxRelease_v2(device));

    /* A kernel writing past its allocation breaks the context (like a real illegal address). */
    CUcontext context;
    OK(cuCtxCreate_v2(&context, 0, device));
    OK(cuModuleLoadData(&module, ptx));
    CUfunction pad;
    OK(cuModuleGetFunction(&pad, module, "fedlora_pad"));
    OK(cuMemAlloc_v2(&sums, 8 * sizeof(float)));
    OK(cuMemAlloc_v2(&src, 12 * sizeof(float)));
    {
        /* pad writes zeros to a 3 x 4 tile of an 8-float buffer: 16 bytes too far. (A stray
           write that stores the guard's own bytes would go unseen; zeros do not.) */
        int outLd = 4, rows = 3, cols = 4, dtype = 0, srcLd = 0, srcRows = 0, srcCols = 0, donorLd = 0;
        CUdeviceptr none = 0;
        void* params[] = {&sums, &outLd, &rows, &cols, &none, &dtype, &srcLd, &srcRows, &srcCols, &none, &donorLd};
        OK(cuLaunchKernel(pad, 1, 1, 1, 4, 3, 1, 0, NULL, params, NULL));
    }
    FAILS_WITH(CUDA_ERROR_ILLEGAL_ADDRESS, cuCtxSynchronize(), "wrote out of bounds: up to 16 bytes past the end");
    /* The broken context answers frees with its fault too (and the memory is still released). */
    EXPECT(cuMemFree_v2(sums) == CUDA_ERROR_ILLEGAL_ADDRESS, "free in a broken context did not report the fault");
    EXPECT(cuMemFree_v2(src) == CUDA_ERROR_ILLEGAL_ADDRESS, "free in a broken context did not report the fault");
    OK(cuModuleUnload(module));
    OK(cuCtxDestroy_v2(context));

    /* Leaks are reported when their context is destroyed. */
    OK(cuCtxCreate_v2(&context, 0, device));
    CUdeviceptr leaked;
    OK(cuMemAlloc_v2(&leaked, 100));
    FAILS_WITH(CUDA_ERROR_ILLEGAL_STATE, cuCtxDestroy_v2(context), "leaks: 1 memory buffers (100 device bytes)");
    OK(cuMemGetInfo_v2(&free_bytes, &total_bytes) == CUDA_ERROR_INVALID_CONTEXT ? CUDA_SUCCESS : CUDA_ERROR_UNKNOWN);

    free(newer);
    free(ptx);
    if (failures != 0) {
        fprintf(stderr, "emu_test: %d failures\n", failures);
        return 1;
    }
    printf("emu_test: all passed\n");
    return 0;
}
