package io.fedlora.kernels;

import io.fedlora.kernels.cpu.VectorKernels;
import org.junit.jupiter.api.AfterAll;

/** The Vector API backend against the scalar reference (the whole contract), on three threads. */
class VectorKernelsTest extends KernelsContractTest {
    private final VectorKernels kernels = new VectorKernels(3);

    @Override
    protected Kernels kernels() {
        return kernels;
    }

    @AfterAll
    void close() {
        kernels.close();
    }
}
