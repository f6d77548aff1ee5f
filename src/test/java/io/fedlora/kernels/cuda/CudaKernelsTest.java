package io.fedlora.kernels.cuda;

import io.fedlora.kernels.Kernels;
import io.fedlora.kernels.KernelsContractTest;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Tag;

/**
 * The whole kernel contract against CudaKernels, on whatever driver is first on the library path:
 * the device emulator in the build (native/build), a real GPU otherwise. It never skips: if CUDA
 * cannot start, construction throws and every test fails.
 */
@Tag("cuda")
class CudaKernelsTest extends KernelsContractTest {
    private final CudaKernels kernels = new CudaKernels();

    @Override
    protected Kernels kernels() {
        return kernels;
    }

    @AfterAll
    void close() {
        kernels.close();
    }
}
