package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import org.junit.jupiter.api.Test;

/** The CUDA backend as the process sees it: chosen by auto, and freeing all it allocates. */
class CudaLifecycleTest {

    @Test
    void autoPicksCudaAndDescribesTheDevice() {
        try (Kernels auto = Backends.create("auto", 1)) {
            assertEquals("cuda", auto.name());
            assertTrue(auto.description().contains("compute capability"), auto.description());
        }
        assertTrue(CudaKernels.isAvailable());
        assertNull(CudaKernels.unavailabilityCause());
    }

    @Test
    void theBackendFreesEveryAllocation() {
        assumeTrue(Emulator.present(), "exact allocation accounting is the emulator's");
        int before = Emulator.liveObjects();
        try (CudaKernels own = new CudaKernels()) {
            own.newAccumulator(3, 5).add(Matrix.of(new float[15], 3, 5), 1f);
            own.newAccumulator(2, 2); // left open: the backend's close() frees it
            own.weightedSum(new float[6], 2, 3, new Matrix[] {Matrix.of(new float[6], 2, 3)}, new float[] {1f},
                    new float[] {1f, 2f}, null);
            assertTrue(Emulator.liveObjects() > before);
        }
        assertEquals(before, Emulator.liveObjects());
    }
}
