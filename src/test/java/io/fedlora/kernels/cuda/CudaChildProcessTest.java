package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.ChildJvm;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The CUDA cases that need a JVM of their own: no driver on the library path, and emulated
 * devices of a chosen memory size (FEDLORA_EMU_MEMORY is read once per process).
 */
class CudaChildProcessTest {

    /** Runs EmulatorChild with the given environment changes (null value: remove the variable). */
    static ChildJvm.Result child(Map<String, String> environment, String mode) throws IOException, InterruptedException {
        return ChildJvm.run(EmulatorChild.class, List.of("--add-modules", "jdk.incubator.vector",
                "--enable-native-access=ALL-UNNAMED"), environment, mode);
    }

    /** The emulator, as the build puts it on the library path. */
    static boolean emulatorOnLibraryPath() {
        String path = System.getenv("LD_LIBRARY_PATH");
        if (path == null) {
            return false;
        }
        for (String dir : path.split(":")) {
            if (!dir.isEmpty() && Files.exists(Path.of(dir, "libcuda.so.1")) && Files.exists(Path.of(dir, "emu_test"))) {
                return true;
            }
        }
        return false;
    }

    static Path emulatorDirectory() {
        for (String dir : System.getenv("LD_LIBRARY_PATH").split(":")) {
            if (!dir.isEmpty() && Files.exists(Path.of(dir, "emu_test"))) {
                return Path.of(dir).toAbsolutePath();
            }
        }
        throw new IllegalStateException("no emulator on LD_LIBRARY_PATH");
    }

    /** A real NVIDIA driver is found without LD_LIBRARY_PATH, so "no driver" cannot be staged here. */
    static boolean realDriverInstalled() {
        return Files.exists(Path.of("/dev/nvidiactl")) || Files.exists(Path.of("/usr/lib/x86_64-linux-gnu/libcuda.so.1"))
                || Files.exists(Path.of("/usr/lib64/libcuda.so.1"));
    }

    @Test
    void withoutADriverAutoPicksVectorAndSaysWhyAndForcedCudaFails() throws Exception {
        assumeFalse(realDriverInstalled(), "a real CUDA driver is installed; cannot run without one");
        ChildJvm.Result r = child(Map.of("LD_LIBRARY_PATH", ""), "backends");
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("chosen=vector"), r.output());
        // Backends' one log line names the reason CUDA was skipped.
        assertTrue(r.output().contains("skipped cuda: the CUDA driver (libcuda.so.1) is missing"), r.output());
        assertTrue(r.output().contains("forced failed: backend 'cuda' was requested but cannot run here: "
                + "the CUDA driver (libcuda.so.1) is missing"), r.output());
    }

    @Test
    void withTheDriverAndNoCublasEverythingButDenseAlgebraRunsOnCuda(@TempDir Path driverOnly) throws Exception {
        assumeTrue(emulatorOnLibraryPath(), "needs the device emulator (native/build) on LD_LIBRARY_PATH");
        // A library path with the emulated driver and without the cuBLAS stand-in: a GPU container without the toolkit.
        Files.createSymbolicLink(driverOnly.resolve("libcuda.so.1"), emulatorDirectory().resolve("libcuda.so.1"));
        ChildJvm.Result r = child(Map.of("LD_LIBRARY_PATH", driverOnly.toString(), "FEDLORA_EMU_QUIET", "1"), "nocublas");
        assertEquals(0, r.exit(), r.output());
        // Weighted sums stay on vector (CudaAutoRule); dense algebra would take CUDA but cuBLAS is missing.
        assertTrue(r.output().contains("chosen=vector"), r.output());
        assertTrue(r.output().contains("dense chosen=vector"), r.output());
        assertTrue(r.output().contains("dense warning=fedlora runs the vector backend, not cuda: the dense algebra needs cuBLAS,"
                + " which did not load: "), r.output());
        assertTrue(r.output().contains("loraNormSquared: same"), r.output());
        assertTrue(r.output().contains("gemm refused: the CUDA backend's product-space GEMM needs cuBLAS"
                + " (libcublas.so.12), which could not be loaded: "), r.output());
        assertTrue(r.output().contains("libcublas.so.12: cannot open shared object file"), r.output());
    }

    @Test
    void aDeviceFaultIsTheErrorReportedAndCleanUpFailuresAreOnlySuppressed() throws Exception {
        assumeTrue(emulatorOnLibraryPath(), "needs the device emulator (native/build) on LD_LIBRARY_PATH");
        ChildJvm.Result r = child(Map.of("FEDLORA_EMU_QUIET", "1"), "fault");
        assertEquals(0, r.exit(), r.output());
        // The first launch (the first client's accumulate) faults; the download's synchronisation finds it.
        assertTrue(r.output().contains("fault: cuStreamSynchronize(compute stream) failed: CUDA_ERROR_ILLEGAL_ADDRESS"),
                r.output());
        assertTrue(r.output().contains("suppressed: cuMemFree failed: CUDA_ERROR_ILLEGAL_ADDRESS"), r.output());
        assertTrue(r.output().contains("close: "), r.output());
        assertTrue(r.output().contains("live objects after close: 0"), r.output());
    }

    @Test
    void aSmallDeviceComputesInChunksWithTheSameResults() throws Exception {
        assumeTrue(emulatorOnLibraryPath(), "needs the device emulator (native/build) on LD_LIBRARY_PATH");
        ChildJvm.Result r = child(Map.of("FEDLORA_EMU_MEMORY", "64K", "FEDLORA_EMU_QUIET", "1"), "chunked");
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("staging 4 KiB x 3"), "the slots must follow the small device:\n" + r.output());
        assertTrue(r.output().contains("too big: CUDA device out of memory: an accumulator of 1000 x 1000 needs 4000000 bytes"),
                r.output());
    }

    @Test
    void aDeviceTooSmallForAnythingIsAClearErrorAndAutoFallsBack() throws Exception {
        assumeTrue(emulatorOnLibraryPath(), "needs the device emulator (native/build) on LD_LIBRARY_PATH");
        ChildJvm.Result r = child(Map.of("FEDLORA_EMU_MEMORY", "16K"), "backends");
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("chosen=vector"), r.output());
        assertTrue(r.output().contains("forced failed: backend 'cuda' was requested but cannot run here: "
                + "the CUDA device has 16384 bytes of memory free; fedlora needs at least 24576"), r.output());
    }
}
