package io.fedlora.kernels;

import io.fedlora.tensor.Matrix;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.ChildJvm;
import io.fedlora.tensor.DType;
import io.fedlora.kernels.cpu.ScalarKernels;
import io.fedlora.kernels.cpu.VectorKernels;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The vector backend's cold start: for its first calls the scalar loops do most of the work while
 * the vector loops warm up on a slice of it. Both phases must give the scalar reference's bits.
 * The build runs every other test with the warm-up off, so this one needs a JVM of its own.
 */
class VectorColdStartTest {

    @Test
    void theBuildRunsTheVectorLoopsFromTheStart() {
        assertTrue(VectorKernels.vectorLoopsInUse(), "surefire sets " + VectorKernels.WARM_UP_PROPERTY + "=false");
    }

    @Test
    void coldAndWarmCallsGiveTheReferenceBits() throws Exception {
        ChildJvm.Result r = ChildJvm.run(Child.class, List.of("--add-modules", "jdk.incubator.vector",
                "-D" + VectorKernels.WARM_UP_PROPERTY + "=true"), Map.of());
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("cold: matches scalar"), r.output());
        assertTrue(r.output().contains("handed over"), r.output());
        assertFalse(r.output().contains("already handed over"), r.output());
        assertTrue(r.output().contains("warm: matches scalar"), r.output());
        assertFalse(r.output().contains("MISMATCH"), r.output());
    }

    /** Child JVM: the same operations before and after every primitive has had its cold calls. */
    public static final class Child {
        public static void main(String[] args) {
            try (VectorKernels vector = new VectorKernels(2); ScalarKernels scalar = new ScalarKernels()) {
                System.out.println("cold: " + compare(vector, scalar) + (VectorKernels.vectorLoopsInUse() ? " (already handed over)" : ""));
                // Enough calls of every primitive to hand over to the vector loops.
                float[] tiny = new float[3 * 37];
                Matrix m = Matrix.of(tiny, 3, 37);
                for (int i = 0; i <= VectorKernels.COLD_CALLS; i++) {
                    vector.weightedSum(new float[3 * 37], 3, 37, new Matrix[] {m}, new float[] {1}, null, null);
                    vector.allFinite(m);
                    vector.pad(new float[4 * 37], 4, 37, m, null);
                }
                System.out.println(VectorKernels.vectorLoopsInUse() ? "handed over" : "still on the scalar loops");
                System.out.println("warm: " + compare(vector, scalar));
            }
        }

        /** Accumulate, weighted sum, pad and finiteness on short and long rows of every dtype. */
        static String compare(Kernels kernels, Kernels reference) {
            SplittableRandom random = new SplittableRandom(5);
            for (int[] shape : new int[][] {{67, 45}, {1, 1031}, {5, 8209}}) {
                int rows = shape[0], cols = shape[1];
                Matrix[] sources = {
                    KernelsContractTest.source(random, DType.F32, rows, cols, 0),
                    KernelsContractTest.source(random, DType.BF16, Math.max(1, rows - 3), Math.max(1, cols - 9), 9),
                    KernelsContractTest.source(random, DType.F16, rows, cols, 2),
                };
                float[] weights = {0.5f, 2f, 1f};
                float[] colScale = KernelsContractTest.scales(random, cols);
                float[] want = new float[rows * cols], got = new float[rows * cols];
                reference.weightedSum(want, rows, cols, sources, weights, null, colScale);
                kernels.weightedSum(got, rows, cols, sources, weights, null, colScale);
                if (!Arrays.equals(want, got)) {
                    return "MISMATCH in weightedSum " + rows + "x" + cols;
                }
                try (Accumulator a = reference.newAccumulator(rows, cols); Accumulator b = kernels.newAccumulator(rows, cols)) {
                    for (int k = 0; k < sources.length; k++) {
                        a.add(sources[k], weights[k]);
                        b.add(sources[k], weights[k]);
                    }
                    a.finish(want, KernelsContractTest.scales(new SplittableRandom(1), rows), null);
                    b.finish(got, KernelsContractTest.scales(new SplittableRandom(1), rows), null);
                }
                if (!Arrays.equals(want, got)) {
                    return "MISMATCH in accumulate " + rows + "x" + cols;
                }
                for (Matrix src : sources) {
                    float[] padWant = new float[(rows + 2) * cols], padGot = new float[(rows + 2) * cols];
                    reference.pad(padWant, rows + 2, cols, src, null);
                    kernels.pad(padGot, rows + 2, cols, src, null);
                    if (!Arrays.equals(padWant, padGot) || kernels.allFinite(src) != reference.allFinite(src)) {
                        return "MISMATCH in pad or allFinite " + rows + "x" + cols + " " + src.dtype();
                    }
                }
                float[] bad = new float[rows * cols];
                bad[bad.length - 1] = Float.NaN;
                if (kernels.allFinite(Matrix.of(bad, rows, cols))) {
                    return "MISMATCH: a NaN was missed";
                }
            }
            return "matches scalar";
        }
    }
}
