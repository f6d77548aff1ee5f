package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Round;
import io.fedlora.Strategy;
import io.fedlora.TestClients;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * NORM on the CUDA backend moves each client across PCIe once per operation: its Gram matrices
 * (the norm that is its weight) run on the host, and only its weighted sum uploads it. The
 * emulator counts the bytes of host-to-device copies; the staged (asynchronous) bytes of a NORM
 * aggregate must be exactly the clients' factor bytes. Checked by hand: with the device Gram put
 * back (A and B staged for cuBLAS, then again for the sum), both tests fail at twice the bytes.
 */
class CudaNormUploadTest {
    private static final List<TestClients.Shape> SHAPES = List.of(new TestClients.Shape("layers.0.q_proj", 96, 80),
            new TestClients.Shape("layers.0.down_proj", 150, 64));

    private static List<ClientUpdate> clients() {
        List<ClientUpdate> clients = new ArrayList<>();
        int[] ranks = {4, 8, 6};
        DType[] dtypes = {DType.BF16, DType.F32, DType.F16};
        for (int k = 0; k < ranks.length; k++) {
            clients.add(TestClients.client("c" + k, 1 + k, ranks[k], SHAPES, dtypes[k], 31 + k));
        }
        return clients;
    }

    /** The bytes of every factor of every client, in their own dtypes: what one upload each moves. */
    private static long factorBytes(List<ClientUpdate> clients) {
        long bytes = 0;
        for (ClientUpdate c : clients) {
            for (Tensor t : c.tensors().values()) {
                bytes += t.elementCount() * t.dtype().byteSize();
            }
        }
        return bytes;
    }

    @Test
    void aNormAggregateUploadsEachClientOnceAndMatchesTheVectorBackendBitForBit() {
        assumeTrue(Emulator.present(), "the byte counters are the emulator's");
        List<ClientUpdate> clients = clients();
        try (CudaKernels cuda = new CudaKernels(2); Kernels vector = Backends.create("vector", 2);
                Aggregator onCuda = Aggregator.builder().strategy(Strategy.NORM).kernels(cuda).build();
                Aggregator onVector = Aggregator.builder().strategy(Strategy.NORM).kernels(vector).build()) {
            long async = Emulator.htodBytes(true), sync = Emulator.htodBytes(false);
            Map<String, Tensor> got = onCuda.aggregate(clients);
            long staged = Emulator.htodBytes(true) - async, small = Emulator.htodBytes(false) - sync;
            assertEquals(factorBytes(clients), staged, "bytes staged for a NORM aggregate of " + clients.size() + " clients");
            assertTrue(small < factorBytes(clients.subList(0, 1)), "synchronous uploads (scales) of " + small + " bytes");
            assertEqualTensors(onVector.aggregate(clients), got);
        }
    }

    @Test
    void aNormRoundUploadsEachClientOnceAndMatchesTheVectorBackendBitForBit() {
        assumeTrue(Emulator.present(), "the byte counters are the emulator's");
        List<ClientUpdate> clients = clients();
        try (CudaKernels cuda = new CudaKernels(2); Kernels vector = Backends.create("vector", 2);
                Aggregator onCuda = Aggregator.builder().strategy(Strategy.NORM).kernels(cuda).build();
                Aggregator onVector = Aggregator.builder().strategy(Strategy.NORM).kernels(vector).build();
                Round cudaRound = onCuda.newRound(); Round vectorRound = onVector.newRound()) {
            long async = Emulator.htodBytes(true);
            for (ClientUpdate c : clients) {
                cudaRound.add(c);
                vectorRound.add(c);
            }
            assertEquals(factorBytes(clients), Emulator.htodBytes(true) - async, "bytes staged by a NORM round's adds");
            assertEqualTensors(vectorRound.finish(), cudaRound.finish());
        }
    }

    @Test
    void theNormTouchesNoDeviceAndEqualsTheVectorBackendsBitForBit() {
        assumeTrue(Emulator.present(), "the byte counters are the emulator's");
        Matrix a = CudaStreamOrderTest.matrix(new java.util.SplittableRandom(4), DType.BF16, 16, 700, 700);
        Matrix b = CudaStreamOrderTest.matrix(new java.util.SplittableRandom(5), DType.F16, 500, 16, 16);
        try (CudaKernels cuda = new CudaKernels(2); Kernels vector = Backends.create("vector", 2)) {
            long async = Emulator.htodBytes(true), sync = Emulator.htodBytes(false);
            // Any device call would fail: the norm must not make one.
            Emulator.fail("cuMemAlloc", 1);
            double got = cuda.loraNormSquared(a, b);
            assertTrue(Emulator.fail("cuMemAlloc", 0) > 0, "loraNormSquared allocated device memory");
            assertEquals(async, Emulator.htodBytes(true));
            assertEquals(sync, Emulator.htodBytes(false));
            assertEquals(Double.doubleToLongBits(vector.loraNormSquared(a, b)), Double.doubleToLongBits(got));
        }
    }

    static void assertEqualTensors(Map<String, Tensor> want, Map<String, Tensor> got) {
        assertEquals(want.keySet(), got.keySet());
        for (var e : want.entrySet()) {
            assertArrayEquals(e.getValue().toFloatArray(), got.get(e.getKey()).toFloatArray(), e.getKey());
        }
    }
}
