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

    /**
     * CudaAutoRule applied: on a machine with a device, auto keeps host-resident weighted sums
     * (ZERO, REPLICATION, NORM) on the vector backend and gives dense algebra (SVD, STACK) to
     * CUDA; the report lists CUDA as running but not chosen, with no warning.
     */
    @Test
    void autoPicksVectorForWeightedSumsAndCudaForDenseAlgebra() {
        assertTrue(CudaKernels.isAvailable());
        assertNull(CudaKernels.unavailabilityCause());
        try (Kernels sums = Backends.create("auto", 1)) {
            assertEquals("vector", sums.name());
        }
        try (Kernels sums = Backends.create("auto", 1, false)) {
            assertEquals("vector", sums.name());
        }
        assumeTrue(CudaKernels.denseAlgebraUnavailabilityCause() == null, "dense algebra on CUDA needs cuBLAS here");
        try (Kernels dense = Backends.create("auto", 1, true)) {
            assertEquals("cuda", dense.name());
            assertTrue(dense.description().contains("compute capability"), dense.description());
        }
        Backends.Report sums = Backends.report(false);
        assertEquals("vector", sums.chosen());
        assertEquals(null, sums.warning(), "a CUDA the rule did not pick is no degradation");
        Backends.Probe cuda = sums.skipped().stream().filter(p -> p.name().equals("cuda")).findFirst().orElseThrow();
        assertTrue(cuda.available() && cuda.detail().contains("auto keeps host-resident weighted sums on the vector backend"),
                cuda.toString());
        assertEquals("cuda", Backends.report(true).chosen());
        // A forced backend serves every kind of work.
        try (Kernels forced = Backends.create("cuda", 1, false)) {
            assertEquals("cuda", forced.name());
        }
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
