package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaFailure.check;

import jcuda.driver.CUresult;
import jcuda.driver.JCudaDriver;

/**
 * The one probe of the CUDA backend (Netty's {@code Epoll} shape): it runs once per JVM, on
 * first use, and needs only the driver ({@code libcuda.so.1}). cuBLAS is not part of it: a host
 * with the driver and without {@code libcublas.so.12} (the usual GPU container without
 * the toolkit) still runs every operation that needs no dense linear algebra
 * ({@link DenseAlgebra} loads cuBLAS on first use). After a failure nothing touches JCuda again.
 */
final class CudaProbe {
    private CudaProbe() {
    }

    private static final class Holder {
        static final String CAUSE = probe();
    }

    /** Null when the driver runs and reports a device, else why not (one line). */
    static String unavailabilityCause() {
        return Holder.CAUSE;
    }

    private static String probe() {
        try {
            int init = JCudaDriver.cuInit(0);
            if (init == CUresult.CUDA_ERROR_NO_DEVICE) {
                return "the CUDA driver found no device (cuInit: CUDA_ERROR_NO_DEVICE)";
            }
            check(init, "cuInit");
            int[] count = new int[1];
            check(JCudaDriver.cuDeviceGetCount(count), "cuDeviceGetCount");
            return count[0] == 0 ? "the CUDA driver reports no device" : null;
        } catch (Throwable t) { // UnsatisfiedLinkError, NoClassDefFoundError, CudaFailure, ...
            return describe(t);
        }
    }

    /**
     * One line: JCuda's loader error spans dozens of lines of nested stack traces, of which the
     * first line and the dynamic linker's own complaint are what a reader needs.
     */
    static String loaderChain(Throwable failure) {
        StringBuilder chain = new StringBuilder();
        for (Throwable t = failure; t != null; t = t.getCause()) {
            String full = String.valueOf(t);
            chain.append(chain.isEmpty() ? "" : "; caused by ").append(full.lines().findFirst().orElse(""));
            full.lines().filter(line -> line.contains("cannot open shared object file")).findFirst()
                    .ifPresent(line -> chain.append(": ").append(line.substring(line.lastIndexOf(": ", line.indexOf("cannot")
                            - 3) + 2).trim()));
        }
        return chain.toString();
    }

    private static String describe(Throwable failure) {
        String text = loaderChain(failure);
        if (text.contains("libcuda.so")) {
            return "the CUDA driver (libcuda.so.1) is missing: no NVIDIA driver is installed, or, to use the"
                    + " fedlora device emulator, put native/build on LD_LIBRARY_PATH (" + text + ")";
        }
        return "the CUDA driver could not be initialised (" + text + ")";
    }
}
