package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/** The float64 GEMM and SYRK the product-space algebra will use, against plain Java loops. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class DenseAlgebraTest {
    private final CudaKernels cuda = new CudaKernels();
    private final SplittableRandom random = new SplittableRandom(9);

    @AfterAll
    void close() {
        cuda.close();
    }

    private double[] values(int count) {
        double[] v = new double[count];
        for (int i = 0; i < count; i++) {
            v[i] = random.nextDouble() * 2 - 1;
        }
        return v;
    }

    /** Column-major element (i, j) of op(X), X with leading dimension ld. */
    private static double at(double[] x, int ld, boolean trans, int i, int j) {
        return trans ? x[i * ld + j] : x[j * ld + i];
    }

    @Test
    void gemmMatchesTheDefinitionForEveryTransposition() {
        int m = 7, n = 5, k = 11;
        for (boolean ta : new boolean[] {false, true}) {
            for (boolean tb : new boolean[] {false, true}) {
                int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 1, ldc = m + 3;
                double[] a = values(lda * (ta ? m : k)), b = values(ldb * (tb ? k : n)), c = values(ldc * n);
                double[] got = cuda.gemm("test", ta, tb, m, n, k, 1.5, a, lda, b, ldb, -0.5, c.clone(), ldc);
                for (int j = 0; j < n; j++) {
                    for (int i = 0; i < ldc; i++) {
                        double want = c[j * ldc + i];
                        if (i < m) {
                            double sum = 0;
                            for (int p = 0; p < k; p++) {
                                sum += at(a, lda, ta, i, p) * at(b, ldb, tb, p, j);
                            }
                            want = 1.5 * sum - 0.5 * want;
                        }
                        assertEquals(want, got[j * ldc + i], 1e-13, "op " + ta + "/" + tb + " (" + i + ", " + j + ")");
                    }
                }
            }
        }
    }

    @Test
    void syrkWritesOneTriangleOfTheGramMatrix() {
        int n = 6, k = 9;
        for (boolean upper : new boolean[] {false, true}) {
            for (boolean trans : new boolean[] {false, true}) {
                int lda = (trans ? k : n) + 1, ldc = n + 2;
                double[] a = values(lda * (trans ? n : k)), c = values(ldc * n);
                double[] got = cuda.syrk("test", upper, trans, n, k, 2.0, a, lda, 0.0, c.clone(), ldc);
                for (int j = 0; j < n; j++) {
                    for (int i = 0; i < ldc; i++) {
                        double want = c[j * ldc + i];
                        if (i < n && (upper ? i <= j : i >= j)) {
                            double sum = 0;
                            for (int p = 0; p < k; p++) {
                                sum += at(a, lda, trans, i, p) * at(a, lda, trans, j, p);
                            }
                            want = 2.0 * sum;
                        }
                        assertEquals(want, got[j * ldc + i], 1e-13, (upper ? "upper" : "lower") + ", trans " + trans
                                + " (" + i + ", " + j + ")");
                    }
                }
            }
        }
    }
}
