package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.tensor.DType;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import jcuda.driver.CUdeviceptr;
import org.junit.jupiter.api.Test;

/** What crosses from Java into the kernels: dtype codes and argument sizes, both checked against the CUDA side. */
class CudaPtxTest {

    @Test
    void dtypeCodesMatchTheKernelsDefines() throws IOException {
        String header = Files.readString(Path.of("cuda/fedlora_common.cuh"));
        Matcher define = Pattern.compile("#define FEDLORA_(F32|BF16|F16) (\\d+)").matcher(header);
        int found = 0;
        while (define.find()) {
            assertEquals(Integer.parseInt(define.group(2)), DTypeCode.of(DType.valueOf(define.group(1))), define.group());
            found++;
        }
        assertEquals(DType.values().length, found, "fedlora_common.cuh must define a code for every DType");
    }

    @Test
    void parameterSizesAreReadFromThePtx() {
        Map<String, int[]> sizes = CudaSession.entryParameterSizes(CudaSession.ptx());
        // fedlora_accumulate(float* sums, int sumsLd, const void* src, int dtype, int srcLd, int rows, int cols, float weight, int* nonFinite)
        assertArrayEquals(new int[] {8, 4, 8, 4, 4, 4, 4, 4, 8}, sizes.get(CudaSession.ACCUMULATE));
        assertEquals(5, sizes.size(), sizes.keySet().toString());
        assertArrayEquals(new int[] {16, 2}, CudaSession.entryParameterSizes(
                ".visible .entry k(\n\t.param .align 8 .b8 k_param_0[16],\n\t.param .u16 k_param_1\n)\n").get("k"));
    }

    @Test
    void aRefusedPtxArrivesWithTheDriversErrorLog() {
        assumeTrue(Emulator.present(), "the refusal text is the emulator's; a real driver writes ptxas' own");
        assertTrue(CudaKernels.isAvailable(), CudaKernels.unavailabilityCause());
        try (CudaSession session = new CudaSession()) {
            String newer = CudaSession.ptx().replace(".version 7.8", ".version 9.1");
            CudaFailure refused = assertThrows(CudaFailure.class, () -> CudaSession.load(newer));
            assertEquals("cuModuleLoadDataEx refused fedlora's PTX: CUDA_ERROR_UNSUPPORTED_PTX_VERSION: PTX ISA 9.1 is newer"
                    + " than the 8.0 a CUDA 12.0 driver loads", refused.getMessage());
        }
    }

    @Test
    void aLaunchWhoseArgumentsDoNotMatchThePtxIsRefusedBeforeTheDriverSeesIt() {
        assertTrue(CudaKernels.isAvailable(), CudaKernels.unavailabilityCause()); // the probe runs cuInit
        try (CudaSession session = new CudaSession()) {
            CUdeviceptr none = null;
            IllegalArgumentException wrongType = assertThrows(IllegalArgumentException.class, () -> session.launch(
                    CudaSession.ALL_FINITE, 1, 1, none, 0, 1, 1, 1, 0)); // an int where the PTX has a pointer
            assertEquals("fedlora_all_finite parameter 5 is 8 bytes in the PTX, the launch passes 4 (Integer)",
                    wrongType.getMessage());
            IllegalArgumentException wrongCount = assertThrows(IllegalArgumentException.class, () -> session.launch(
                    CudaSession.ALL_FINITE, 1, 1, none, 0, 1, 1));
            assertTrue(wrongCount.getMessage().contains("takes 6 parameters in the PTX, the launch passes 4"),
                    wrongCount.getMessage());
        }
    }
}
