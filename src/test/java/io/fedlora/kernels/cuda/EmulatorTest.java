package io.fedlora.kernels.cuda;

import io.fedlora.tensor.Matrix;

import static jcuda.driver.JCudaDriver.cuCtxCreate;
import static jcuda.driver.JCudaDriver.cuCtxDestroy;
import static jcuda.driver.JCudaDriver.cuDeviceGet;
import static jcuda.driver.JCudaDriver.cuMemAlloc;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoD;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import jcuda.CudaException;
import jcuda.Pointer;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * The CUDA backend as the process sees it, and the emulator's strictness provoked on purpose
 * through the same JCuda bindings the backend uses. The strictness tests need the emulator and
 * are skipped (not passed) on a real GPU.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class EmulatorTest {
    private final CudaKernels kernels = new CudaKernels();

    @AfterAll
    void close() {
        kernels.close();
    }

    private boolean emulated() {
        return kernels.description().startsWith("fedlora device emulator");
    }

    /** The emulator's last error message, read from its libcuda.so.1 through the FFM API. */
    private static String lastEmulatorError() throws Throwable {
        SymbolLookup emulator = SymbolLookup.libraryLookup("libcuda.so.1", Arena.global());
        MethodHandle lastError = Linker.nativeLinker().downcallHandle(
                emulator.find("fedlora_emu_last_error").orElseThrow(), FunctionDescriptor.of(ValueLayout.ADDRESS));
        return ((MemorySegment) lastError.invokeExact()).reinterpret(4096).getString(0);
    }

    @Test
    void autoPicksCudaAndDescribesTheDevice() {
        try (Kernels auto = Backends.create("auto", 1)) {
            assertEquals("cuda", auto.name());
            assertTrue(auto.description().contains("compute capability"), auto.description());
        }
        assertTrue(CudaKernels.isAvailable());
        assertEquals(null, CudaKernels.unavailabilityCause());
    }

    @Test
    void anOutOfBoundsCopyIsAnError() throws Throwable {
        assumeTrue(emulated(), "provokes the emulator's bounds check");
        kernels.freeDeviceBytes(); // makes the primary context current on this thread
        CUdeviceptr buffer = new CUdeviceptr();
        cuMemAlloc(buffer, 64);
        try {
            CudaException e = assertThrows(CudaException.class,
                    () -> cuMemcpyHtoD(buffer, Pointer.to(new float[32]), 128));
            assertTrue(e.getMessage().contains("CUDA_ERROR_INVALID_VALUE"), e.getMessage());
            assertTrue(lastEmulatorError().contains("run 64 bytes past the end of the 64-byte device allocation"),
                    lastEmulatorError());
        } finally {
            cuMemFree(buffer);
        }
    }

    @Test
    void aLeakIsReportedWhenItsContextIsDestroyed() throws Throwable {
        assumeTrue(emulated(), "provokes the emulator's leak check");
        CUdevice device = new CUdevice();
        cuDeviceGet(device, 0);
        CUcontext context = new CUcontext();
        cuCtxCreate(context, 0, device);
        CUdeviceptr leaked = new CUdeviceptr();
        cuMemAlloc(leaked, 1000);
        CudaException e = assertThrows(CudaException.class, () -> cuCtxDestroy(context));
        assertTrue(e.getMessage().contains("CUDA_ERROR_ILLEGAL_STATE"), e.getMessage());
        assertTrue(lastEmulatorError().contains("context destroyed with leaks: 1 memory buffers (1000 device bytes)"),
                lastEmulatorError());
    }

    @Test
    void theBackendFreesEveryAllocation() {
        assumeTrue(emulated(), "exact device memory accounting is the emulator's");
        long before = freeDeviceBytes();
        try (CudaKernels own = new CudaKernels()) {
            own.newAccumulator(3, 5).add(io.fedlora.tensor.Matrix.of(new float[15], 3, 5), 1f);
            own.newAccumulator(2, 2); // left open: the backend's close() frees it
            own.weightedSum(new float[6], 2, 3, new io.fedlora.tensor.Matrix[] {io.fedlora.tensor.Matrix.of(new float[6], 2, 3)},
                    new float[] {1f}, new float[] {1f, 2f}, null);
            assertTrue(freeDeviceBytes() < before);
        }
        assertEquals(before, freeDeviceBytes());
    }

    private long freeDeviceBytes() {
        return kernels.freeDeviceBytes();
    }
}
