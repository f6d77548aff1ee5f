package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.kernels.cuda.CudaAutoRule.Residence;
import org.junit.jupiter.api.Test;

/** The auto rule and the claim behind it: host-resident sums never go faster through PCIe. */
class CudaAutoRuleTest {

    @Test
    void hostResidentSumsStayOnTheCpuDenseAlgebraAndDeviceDataGoToCuda() {
        assertFalse(CudaAutoRule.prefersCuda(Residence.HOST, false));
        assertTrue(CudaAutoRule.prefersCuda(Residence.HOST, true));
        assertTrue(CudaAutoRule.prefersCuda(Residence.DEVICE, false));
    }

    @Test
    void theCpuEstimateBeatsThePcieEstimateForEveryHostBandwidthAndThreadCount() {
        // From a laptop (10 GB/s) to a two-socket server (600 GB/s), 1 to 64 packing threads.
        for (double host = 10; host <= 600; host += 10) {
            for (int packers = 1; packers <= 64; packers++) {
                assertTrue(CudaAutoRule.vectorGbs(host) > CudaAutoRule.hostResidentCudaGbs(host, packers),
                        host + " GB/s, " + packers + " packers");
            }
        }
    }
}
