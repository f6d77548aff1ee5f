package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.ChildJvm;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The product-space operations on a CUDA host without cuBLAS (the driver, no libcublas.so.12: a GPU
 * container without the toolkit), in a JVM of its own since the library path is fixed at start.
 * The choice made, as Backends makes it for the backends themselves: a CUDA backend that was asked
 * for refuses (a forced backend that quietly computed on the CPU would hide a broken installation);
 * one that auto chose falls back to the host Gram kernels with a warning (SVD worked there before
 * the CUDA Grams existed, and must keep working).
 */
class CudaGramChildTest {

    @Test
    void withoutCublasAForcedCudaRefusesSvdAndFidelityInOneLineAutoRunsVectorAndStackRuns(@TempDir Path driverOnly) throws Exception {
        assumeTrue(CudaChildProcessTest.emulatorOnLibraryPath(), "needs the device emulator (native/build) on LD_LIBRARY_PATH");
        Files.createSymbolicLink(driverOnly.resolve("libcuda.so.1"),
                CudaChildProcessTest.emulatorDirectory().resolve("libcuda.so.1"));
        ChildJvm.Result r = ChildJvm.run(CudaGramChild.class, java.util.List.of("--add-modules", "jdk.incubator.vector",
                "--enable-native-access=ALL-UNNAMED"), Map.of("LD_LIBRARY_PATH", driverOnly.toString(), "FEDLORA_EMU_QUIET", "1"));
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("backend=cuda"), r.output());
        String refusal = "the CUDA backend's product-space Gram matrices (SVD, fidelity) needs cuBLAS (libcublas.so.12),"
                + " which could not be loaded: ";
        assertTrue(r.output().contains("svd refused: " + refusal), r.output());
        assertTrue(r.output().contains("fidelity refused: " + refusal), r.output());
        assertTrue(r.output().contains("libcublas.so.12: cannot open shared object file"), r.output());
        assertTrue(r.output().contains("allocations before the refusal: 0"), r.output());
        assertTrue(r.output().contains("live objects changed by the refusals: 0"), r.output());
        assertTrue(r.output().contains("stack on cuda equals scalar: true"), r.output());
        // auto (CudaAutoRule): dense algebra goes to CUDA only where cuBLAS loads; here it is the vector backend.
        assertTrue(r.output().contains("auto backend=vector"), r.output());
        assertTrue(r.output().contains("fedlora runs the vector backend, not cuda: the dense algebra needs cuBLAS"), r.output());
        assertTrue(r.output().contains("svd under auto equals vector: true"), r.output());
        // Gram kernels for a CUDA backend that was not asked for: the host ones, with one warning.
        assertTrue(r.output().contains("unrequested cuda pairs with: vector"), r.output());
        assertTrue(r.output().contains("product space: the CUDA backend (chosen by auto) cannot load cuBLAS (libcublas.so.12): "
                + "java.lang.UnsatisfiedLinkError"), r.output());
        assertTrue(r.output().contains("run on the vector Gram kernels instead"), r.output());
    }
}
