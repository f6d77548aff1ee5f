package io.fedlora.kernels.cuda;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.tensor.Tensor;
import java.util.List;
import java.util.Map;

/**
 * Child-JVM entry for {@link CudaGramChildTest}: the CUDA backend on a library path with the
 * driver and without libcublas.so.12. SVD and the fidelity report need the device Grams and must
 * refuse with one line naming what is missing, allocating nothing, when the backend was asked for.
 * {@code auto} does not choose CUDA for SVD here (CudaAutoRule: dense algebra needs cuBLAS), so SVD
 * runs on the vector backend, bit for bit; and Gram kernels paired with a CUDA backend that was not
 * asked for ({@code ProductSpace.gramKernelsFor(kernels, false)}) are the host ones, with a warning. STACK needs no Gram matrix and must run, equal to the scalar
 * backend's. Prints what it found; exits 0 when its checks held.
 */
public final class CudaGramChild {
    private CudaGramChild() {
    }

    public static void main(String[] args) {
        boolean ok = true;
        List<ClientUpdate> clients = CudaGramTest.updates(7);
        try (Aggregator svd = Aggregator.builder().strategy(Strategy.SVD).backend("cuda").build();
                Aggregator stack = Aggregator.builder().strategy(Strategy.STACK).backend("cuda").build();
                Aggregator reference = Aggregator.builder().strategy(Strategy.STACK).backend("scalar").build()) {
            System.out.println("backend=" + svd.backendName());
            int baseline = Emulator.liveObjects();
            // Armed: the first device allocation would fail. The refusal must come first, so it stays armed.
            Emulator.fail("cuMemAlloc", 1);
            try {
                svd.aggregate(clients);
                ok = false;
                System.out.println("svd ran without cuBLAS");
            } catch (UnsupportedOperationException e) {
                System.out.println("svd refused: " + e.getMessage());
                ok &= !e.getMessage().contains("\n");
            } catch (RuntimeException e) {
                ok = false;
                System.out.println("svd failed otherwise: " + e);
            }
            System.out.println("allocations before the refusal: " + (Emulator.fail("cuMemAlloc", 0) == 1 ? 0 : "some"));
            try {
                svd.fidelity(clients, List.of(Strategy.ZERO, Strategy.SVD));
                ok = false;
                System.out.println("fidelity ran without cuBLAS");
            } catch (UnsupportedOperationException e) {
                System.out.println("fidelity refused: " + e.getMessage());
            }
            System.out.println("live objects changed by the refusals: " + (Emulator.liveObjects() - baseline));
            ok &= Emulator.liveObjects() == baseline;
            // A CUDA backend that nobody asked for pairs with the host Gram kernels, with a warning.
            try (CudaKernels device = new CudaKernels(1)) {
                String host = io.fedlora.product.ProductSpace.gramKernelsFor(device, false).name();
                System.out.println("unrequested cuda pairs with: " + host);
                ok &= "vector".equals(host);
            }
            // auto: a driver and a device, but no cuBLAS, so the dense algebra runs on the vector backend.
            try (Aggregator auto = Aggregator.builder().strategy(Strategy.SVD).globalRank(6).build();
                    Aggregator vector = Aggregator.builder().strategy(Strategy.SVD).globalRank(6).backend("vector").build()) {
                System.out.println("auto backend=" + auto.backendName());
                boolean same = sameBits(auto.aggregate(clients), vector.aggregate(clients));
                System.out.println("svd under auto equals vector: " + same);
                ok &= same;
            }
            boolean same = sameBits(stack.aggregate(clients), reference.aggregate(clients));
            System.out.println("stack on cuda equals scalar: " + same);
            ok &= same;
        }
        System.exit(ok ? 0 : 1);
    }

    private static boolean sameBits(Map<String, Tensor> got, Map<String, Tensor> want) {
        boolean same = got.keySet().equals(want.keySet());
        for (String key : want.keySet()) {
            same &= java.util.Arrays.equals(want.get(key).toFloatArray(), got.get(key).toFloatArray());
        }
        return same;
    }
}
