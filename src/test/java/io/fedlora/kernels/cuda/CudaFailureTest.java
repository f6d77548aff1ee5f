package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Every driver call an operation makes is made to fail in turn (the emulator's failure
 * injection: the first, second, ... call of that function fails once). Each time the operation
 * must throw an error naming the call that failed (never one from the clean-up after it), leave
 * no device memory, pinned memory, stream, event or module behind, and leave the backend working:
 * afterwards every operation still matches the scalar backend.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaFailureTest {
    private final ScalarKernels scalar = new ScalarKernels();
    private final SplittableRandom random = new SplittableRandom(5);
    private final Matrix[] sources = {
        CudaStreamOrderTest.matrix(random, DType.F32, 9, 40, 40), CudaStreamOrderTest.matrix(random, DType.BF16, 7, 31, 40),
        CudaStreamOrderTest.matrix(random, DType.F16, 9, 37, 37),
    };
    private final float[] weights = {0.5f, 1.5f, 2f};
    private final float[] rowScale = new float[9];

    CudaFailureTest() {
        for (int i = 0; i < rowScale.length; i++) {
            rowScale[i] = 1f / (i + 1);
        }
    }

    @AfterAll
    void close() {
        scalar.close();
    }

    /** One operation of each kind; accumulators it opens are closed by the operation, also when it fails. */
    private void operation(String name, Kernels kernels, float[] out) {
        switch (name) {
            case "weightedSum" -> kernels.weightedSum(out, 9, 40, sources, weights, rowScale, null);
            case "pad" -> kernels.pad(out, 9, 40, sources[1], new float[9 * 40]);
            case "allFinite" -> out[0] = (kernels instanceof CudaKernels cuda ? cuda.deviceAllFinite(sources[2])
                    : kernels.allFinite(sources[2])) ? 1 : 0;
            case "accumulator" -> {
                try (Accumulator a = kernels.newAccumulator(7, 31); Accumulator b = kernels.newAccumulator(9, 40)) {
                    a.add(sources[1], weights[1]);
                    a.grow(9, 40);
                    b.add(sources[0], weights[0]);
                    b.add(a);
                    b.add(sources[2], weights[2]);
                    b.finish(out, rowScale, null);
                }
            }
            default -> throw new IllegalArgumentException(name);
        }
    }

    private static final List<String> CALLS = List.of("cuMemAlloc", "cuMemHostAlloc", "cuMemcpyHtoD", "cuMemcpyHtoDAsync",
            "cuMemcpyDtoH", "cuMemcpyDtoHAsync", "cuMemsetD32Async", "cuLaunchKernel", "cuEventRecord", "cuStreamWaitEvent",
            "cuStreamCreate", "cuEventCreate", "cuModuleLoadData");

    @ParameterizedTest
    // Not loraNormSquared: it runs on the host and makes no driver call (CudaNormUploadTest).
    @ValueSource(strings = {"weightedSum", "pad", "allFinite", "accumulator"})
    void aFailingCallLeavesNothingBehindAndIsTheErrorReported(String name) {
        assumeTrue(Emulator.present(), "failure injection is the emulator's");
        try (CudaKernels cuda = new CudaKernels()) {
            // The clean result, before any failure; it must match the scalar backend.
            float[] want = new float[9 * 40], reference = new float[9 * 40];
            operation(name, cuda, want);
            operation(name, scalar, reference);
            assertArrayEquals(reference, want, name + " before any failure");
            int baseline = Emulator.liveObjects();
            List<String> failed = new ArrayList<>();
            for (String call : CALLS) {
                for (int nth = 1; ; nth++) {
                    Emulator.fail(call, nth);
                    RuntimeException thrown = null;
                    try {
                        operation(name, cuda, new float[9 * 40]);
                    } catch (RuntimeException e) {
                        thrown = e;
                    }
                    boolean fired = Emulator.fail(call, 0) == 0;
                    assertEquals(baseline, Emulator.liveObjects(), name + " with call " + nth + " of " + call
                            + " failing left objects behind");
                    if (!fired) {
                        assertEquals(null, thrown, name + " threw though no call failed");
                        break;
                    }
                    if (thrown == null) {
                        fail(name + " ignored the failure of call " + nth + " of " + call);
                    }
                    assertTrue(thrown.getMessage().contains(call), name + ": call " + nth + " of " + call
                            + " failed, but the error reported is: " + thrown);
                    failed.add(call + "#" + nth);
                }
            }
            assertTrue(failed.size() >= 3, name + " made too few driver calls to test: " + failed);
            float[] got = new float[9 * 40];
            operation(name, cuda, got);
            assertArrayEquals(want, got, name + " after the injected failures " + failed);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"cuMemAlloc", "cuMemHostAlloc", "cuStreamCreate", "cuEventCreate", "cuModuleLoadData"})
    void aBackendThatCannotOpenFreesWhatItMadeAndSaysWhy(String call) {
        assumeTrue(Emulator.present(), "failure injection is the emulator's");
        int baseline = Emulator.liveObjects();
        for (int nth = 1; ; nth++) {
            Emulator.fail(call, nth);
            try (CudaKernels opened = new CudaKernels()) {
                assertTrue(Emulator.fail(call, 0) > 0, "the backend opened though call " + nth + " of " + call + " failed");
                break;
            } catch (UnsupportedOperationException e) {
                assertTrue(e.getMessage().startsWith("the CUDA device could not be set up: " + call), e.getMessage());
                assertEquals(baseline, Emulator.liveObjects(), "call " + nth + " of " + call + " failing left objects behind");
            }
        }
        assertEquals(baseline, Emulator.liveObjects());
    }
}
