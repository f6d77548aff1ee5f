package io.fedlora.bench;

import io.fedlora.tensor.Tensor;
import java.util.Arrays;
import java.util.Map;

/** Checks, before anything is timed, that two paths produced the same global adapter. */
final class Agreement {
    private Agreement() {
    }

    /** Same keys and shapes, and every value within 1e-4 of the largest magnitude (float32 sums in other orders). */
    static void check(String path, Map<String, Tensor> expected, Map<String, Tensor> actual) {
        if (!expected.keySet().equals(actual.keySet())) {
            throw new IllegalStateException(path + " produced keys " + actual.keySet() + ", expected " + expected.keySet());
        }
        for (Map.Entry<String, Tensor> e : expected.entrySet()) {
            Tensor want = e.getValue(), got = actual.get(e.getKey());
            if (!Arrays.equals(want.shape(), got.shape())) {
                throw new IllegalStateException(path + ": " + e.getKey() + " is " + got + ", expected " + want);
            }
            float[] w = want.toFloatArray(), g = got.toFloatArray();
            double largest = 0, worst = 0;
            for (int i = 0; i < w.length; i++) {
                largest = Math.max(largest, Math.abs(w[i]));
                worst = Math.max(worst, Math.abs(w[i] - g[i]));
            }
            if (!(worst <= 1e-4 * largest + 1e-7)) {
                throw new IllegalStateException(path + ": " + e.getKey() + " differs from the fused result by " + worst
                        + " (largest value " + largest + ")");
            }
        }
    }
}
