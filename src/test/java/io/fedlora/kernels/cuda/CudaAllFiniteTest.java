package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.fedlora.TestClients;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The two finiteness scans the backend has, the host one {@code allFinite} uses and the device
 * kernel kept for device-resident data, against ScalarKernels: every lane of the eight-byte host
 * scan (positions 0..8 and near the end), the element tail, strided views, and the split across
 * threads above 8 MiB.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaAllFiniteTest {
    private final CudaKernels cuda = new CudaKernels();
    private final ScalarKernels scalar = new ScalarKernels();
    private final ExecutorService threads = Executors.newFixedThreadPool(3);

    @AfterAll
    void close() {
        cuda.close();
        scalar.close();
        threads.shutdownNow();
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void hostAndDeviceScansAgreeWithTheScalarBackend(DType dtype) {
        SplittableRandom random = new SplittableRandom(dtype.ordinal());
        for (int cols : new int[] {1, 3, 4, 5, 9, 33}) {
            int rows = 3, stride = cols + 2;
            float[] clean = TestClients.values(random, rows * stride);
            for (int at = -1; at < rows * stride; at++) {
                for (float bad : new float[] {Float.NaN, Float.NEGATIVE_INFINITY}) {
                    float[] values = clean.clone();
                    if (at >= 0) {
                        values[at] = bad;
                    }
                    Matrix m = new Matrix(Tensor.convert(values, dtype, rows, stride).data(), dtype, 0, rows, cols, stride);
                    boolean want = scalar.allFinite(m);
                    assertEquals(want, HostScan.allFinite(m, threads, 1), dtype + " host " + cols + " cols, " + bad + " at " + at);
                    if (at % 7 == 0 || cols == 33) {
                        assertEquals(want, cuda.deviceAllFinite(m), dtype + " device " + cols + " cols, " + bad + " at " + at);
                    }
                    if (at < 0) {
                        break;
                    }
                }
            }
        }
        // The largest finite values (all exponent bits but one set) in every lane are finite.
        float largest = switch (dtype) {
            case F32 -> Float.MAX_VALUE;
            case BF16 -> Float.intBitsToFloat(0x7f7f0000); // bf16 0x7f7f
            case F16 -> 65504f; // f16 0x7bff
        };
        for (int cols : new int[] {1, 4, 8, 13}) {
            float[] values = new float[cols];
            java.util.Arrays.fill(values, -largest);
            Matrix m = Matrix.dense(Tensor.convert(values, dtype, 1, cols).data(), dtype, 1, cols);
            assertEquals(true, HostScan.allFinite(m, threads, 1), dtype + " largest finite, " + cols + " cols");
            assertEquals(true, scalar.allFinite(m));
        }
        // Above 8 MiB the rows are scanned by three threads; the bad value sits in the last part.
        int rows = 64, cols = (9 << 20) / rows / dtype.byteSize();
        float[] values = new float[rows * cols];
        Matrix big = Matrix.dense(Tensor.convert(values, dtype, rows, cols).data(), dtype, rows, cols);
        assertEquals(true, HostScan.allFinite(big, threads, 3));
        dtype.set(big.data(), (long) (rows - 1) * cols + cols - 1, Float.POSITIVE_INFINITY);
        assertEquals(false, HostScan.allFinite(big, threads, 3));
    }
}
