package io.fedlora.kernels.cuda;

/**
 * When {@code auto} should prefer the CUDA backend over the vector backend: a rule written down
 * from DESIGN §7's figures, to be revisited once {@code bin/gpu-check} has measured a real GPU
 * (change the constants or {@link #prefersCuda}, not the callers). {@code Backends} applies it
 * when it resolves {@code auto}, per kind of work ({@code Backends.get(boolean denseAlgebra)}):
 * the product-space strategies (SVD, STACK) are dense algebra, ZERO, REPLICATION and NORM are
 * weighted sums. {@code Backends} links this class directly, so it must never reference JCuda.
 *
 * <p>The reasoning. Aggregation is memory-bound: each client byte is read once and multiplied
 * once. Every fedlora input is host-resident today (memory-mapped safetensors, heap arrays,
 * numpy memory by address), so on the CUDA path each byte is read from host memory by a packing
 * thread, written to pinned memory, and read again by the DMA engine: three host-memory
 * touches, then PCIe, whose practical rate ({@value #PCIE_GBS} GB/s for PCIe 5 x16) is itself
 * below a server's host memory bandwidth. The vector backend touches each byte once and targets
 * {@value #VECTOR_SHARE_OF_HOST_BANDWIDTH} of the host's STREAM triad. So for host-resident data
 * {@code min(PCIe, host / 3, packers x per-core copy)} is below {@code 0.7 x host} on any machine:
 * the GPU cannot win a plain ZERO / REPLICATION round however large. It wins where the work is
 * compute-bound or the data is already on the device: the product-space algebra (Gram matrices
 * of stacked factors: r FMAs per byte loaded, at r = 64 32 flop/byte, which a few CPU cores
 * cannot feed at PCIe rate while a GPU can), and device-resident rounds, which run at HBM
 * bandwidth ({@value #H200_HBM_GBS} GB/s on an H200), 10x or more above any host. NORM is a
 * weighted sum here: its Gram matrices run on the host on either backend
 * ({@code CudaKernels.loraNormSquared}: measured 0.8-2.6 GB/s per thread on the build machine),
 * so the GPU would only add PCIe. Once a device Gram shares the sum's upload, NORM belongs with
 * the dense algebra: revisit then.
 */
public final class CudaAutoRule {
    /** Practical host-to-device rate of PCIe 5 x16 (DESIGN §7), GB/s. */
    static final double PCIE_GBS = 55;
    /** H200 HBM3e bandwidth (DESIGN §7), GB/s. */
    static final double H200_HBM_GBS = 4800;
    /** Host-memory touches per input byte on the CUDA path: pack read, pack write, DMA read. */
    static final int CUDA_HOST_TOUCHES = 3;
    /** What one packing thread copies, GB/s (a typical server core; measure on the target). */
    static final double COPY_GBS_PER_CORE = 8;
    /** The vector backend's target share of the host's triad bandwidth (DESIGN §7). */
    static final double VECTOR_SHARE_OF_HOST_BANDWIDTH = 0.7;

    private CudaAutoRule() {
    }

    /** Where a round's client data lives when it reaches the kernels. */
    public enum Residence { HOST, DEVICE }

    /**
     * True when {@code auto} should run this kind of work on CUDA: the data is already on the
     * device, or the work is dense linear algebra (the product-space strategies SVD and STACK),
     * which is compute-bound. False for host-resident weighted sums (ZERO, REPLICATION, NORM),
     * however large (see the class comment).
     */
    public static boolean prefersCuda(Residence residence, boolean denseAlgebra) {
        return residence == Residence.DEVICE || denseAlgebra;
    }

    /** Estimated rate of a host-resident weighted sum on CUDA, GB/s of client data. */
    static double hostResidentCudaGbs(double hostTriadGbs, int packers) {
        return Math.min(PCIE_GBS, Math.min(hostTriadGbs / CUDA_HOST_TOUCHES, packers * COPY_GBS_PER_CORE));
    }

    /** Estimated rate of the same sum on the vector backend, GB/s of client data. */
    static double vectorGbs(double hostTriadGbs) {
        return VECTOR_SHARE_OF_HOST_BANDWIDTH * hostTriadGbs;
    }

    /** One line for logs and {@code fedlora info}: the rule and the figures behind it. */
    public static String summary() {
        return String.format(java.util.Locale.ROOT, "auto prefers CUDA for device-resident data (HBM %.0f GB/s) and dense"
                + " algebra (SVD, STACK, with cuBLAS); host-resident weighted sums (ZERO, REPLICATION, NORM: its Gram runs on"
                + " the host) stay on the vector backend (CUDA path min(PCIe %.0f GB/s, host/%d), CPU %.0f%% of host bandwidth)",
                H200_HBM_GBS, PCIE_GBS, CUDA_HOST_TOUCHES, VECTOR_SHARE_OF_HOST_BANDWIDTH * 100);
    }
}
