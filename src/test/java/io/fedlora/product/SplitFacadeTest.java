package io.fedlora.product;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.LoraScale;
import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.ejml.data.DMatrixRMaj;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * SVD's output split through the facade ({@code Policy.split}): FLEXLORA ({@code B = U Sigma / s},
 * {@code A = V^T}) and BALANCED ({@code B = U (Sigma / s)^1/2}, {@code A = (Sigma / s)^1/2 V^T})
 * write the same {@code s B A} (held in float64 against each other and against a dense SVD), the
 * balanced factors have equal norms per component ({@code ||B e_i|| = ||A^T e_i||}, their product
 * {@code sigma_i / s}) where FlexLoRA's A rows are unit vectors, {@link Aggregator#truncate} of
 * either gives each client rank its best approximation (nested truncation), and the components
 * past the numerical rank are filled alike (zero B, orthonormal A rows). Scalar and vector
 * backends, with and without folded LoRA scales.
 */
class SplitFacadeTest {

    private static final String Q = "base_model.model.layers.0.self_attn.q_proj";
    private static final int M = 48, N = 40;

    private static List<ClientUpdate> updates(int[] ranks, double[] weights, long seed, LoraScale scale) {
        List<ModuleFactors> q = Dense64.clients(seed, M, N, ranks, weights, null);
        List<ClientUpdate> out = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            ModuleFactors f = q.get(k);
            Map<String, Tensor> t = new LinkedHashMap<>();
            t.put(Q + ".lora_A.weight", Tensor.of(floats(f.a()), f.a().rows(), f.a().cols()));
            t.put(Q + ".lora_B.weight", Tensor.of(floats(f.b()), f.b().rows(), f.b().cols()));
            ClientUpdate u = ClientUpdate.of("client-" + k, weights[k], t);
            out.add(scale == null ? u : u.withScale(scale));
        }
        return out;
    }

    private static float[] floats(Matrix x) {
        float[] v = new float[x.rows() * x.cols()];
        for (int i = 0; i < x.rows(); i++) {
            for (int j = 0; j < x.cols(); j++) {
                v[i * x.cols() + j] = x.get(i, j);
            }
        }
        return v;
    }

    /** The exact average {@code sum_k w_k s_k B_k A_k} in float64. */
    private static DMatrixRMaj exact(List<ClientUpdate> updates, LoraScale scale) {
        List<ModuleFactors> out = new ArrayList<>();
        for (ClientUpdate u : updates) {
            Tensor a = u.tensors().get(Q + ".lora_A.weight"), b = u.tensors().get(Q + ".lora_B.weight");
            int r = (int) a.dim(0);
            out.add(new ModuleFactors(u.clientId(), Matrix.dense(a.data(), a.dtype(), r, N),
                    Matrix.dense(b.data(), b.dtype(), M, r), u.weight(), scale == null ? 1 : scale.of(Q, r)));
        }
        return Dense64.exactAverage(out);
    }

    private static DMatrixRMaj product(Map<String, Tensor> global, double scale) {
        Tensor a = global.get(Q + ".lora_A.weight"), b = global.get(Q + ".lora_B.weight");
        return Dense64.product(b.toFloatArray(), a.toFloatArray(), M, (int) a.dim(0), N, scale);
    }

    private static double columnNorm(float[] b, int rank, int i) {
        double s = 0;
        for (int row = 0; row < M; row++) {
            s += (double) b[row * rank + i] * b[row * rank + i];
        }
        return Math.sqrt(s);
    }

    private static double rowNorm(float[] a, int i) {
        double s = 0;
        for (int c = 0; c < N; c++) {
            s += (double) a[i * N + c] * a[i * N + c];
        }
        return Math.sqrt(s);
    }

    private static Map<String, Tensor> aggregate(String backend, Policy policy, List<ClientUpdate> updates) {
        try (Aggregator agg = Aggregator.builder().policy(policy).backend(backend).build()) {
            return agg.aggregate(updates);
        }
    }

    @ParameterizedTest(name = "{0} fold={1}")
    @CsvSource({"scalar,false", "scalar,true", "vector,false", "vector,true"})
    void bothSplitsWriteTheSameProductAndBalancedFactorsAreBalanced(String backend, boolean fold) {
        int[] ranks = {2, 4, 8, 6};
        LoraScale scale = fold ? LoraScale.alphaOverRank(16) : null;
        int rank = 8;
        double outScale = fold ? 16.0 / rank : 1;
        List<ClientUpdate> updates = updates(ranks, new double[] {1, 3, 2, 1}, 31, scale);
        Policy flex = Policy.of(Strategy.SVD).withGlobalRank(rank).withFoldScale(scale);
        Policy balanced = flex.withSplit(Split.BALANCED);
        Map<String, Tensor> gf = aggregate(backend, flex, updates), gb = aggregate(backend, balanced, updates);

        DMatrixRMaj dw = exact(updates, scale);
        Dense64.Svd ref = Dense64.svd(dw);
        DMatrixRMaj pf = product(gf, outScale), pb = product(gb, outScale);
        double same = Dense64.relative(pf, pb, dw);
        assertTrue(same < 2e-6, "s B A of the two splits differ by " + same);
        double best = Dense64.relative(pb, ref.truncated(rank), dw);
        assertTrue(best < 2e-6, "balanced s B A against the dense best rank-" + rank + ": " + best);

        float[] bb = gb.get(Q + ".lora_B.weight").toFloatArray(), ab = gb.get(Q + ".lora_A.weight").toFloatArray();
        float[] bf = gf.get(Q + ".lora_B.weight").toFloatArray(), af = gf.get(Q + ".lora_A.weight").toFloatArray();
        for (int i = 0; i < rank; i++) {
            double nb = columnNorm(bb, rank, i), na = rowNorm(ab, i);
            assertEquals(nb, na, 1e-5 * na, "balanced component " + i + ": ||B e_i|| vs ||A^T e_i||");
            assertEquals(ref.sigma()[i] / outScale, nb * na, 2e-5 * ref.sigma()[i] / outScale,
                    "balanced component " + i + ": ||B e_i|| ||A^T e_i|| = sigma_i / s");
            // FlexLoRA: orthonormal A rows, the whole singular value in B.
            assertEquals(1, rowNorm(af, i), 1e-5, "flexlora A row " + i);
            assertEquals(ref.sigma()[i] / outScale, columnNorm(bf, rank, i), 2e-5 * ref.sigma()[i] / outScale,
                    "flexlora B column " + i);
        }
        assertTrue(Math.abs(rowNorm(ab, 0) - 1) > 0.1, "the test tells the splits apart: balanced A row 0 has norm "
                + rowNorm(ab, 0));

        // FlexLoRA redistribution from a balanced global: nested truncation, each client's best rank-r part.
        for (int r : ranks) {
            Map<String, Tensor> mine = Aggregator.truncate(gb, r);
            double e = Dense64.relative(product(mine, outScale), ref.truncated(r), dw);
            assertTrue(e < 2e-6, "balanced truncated to " + r + ": " + e);
            double d = Dense64.relative(product(mine, outScale), product(Aggregator.truncate(gf, r), outScale), dw);
            assertTrue(d < 2e-6, "truncated to " + r + ", the splits differ by " + d);
        }
    }

    /** Past the numerical rank (S = 5 < R = 8) both splits write zero B columns and orthonormal A rows. */
    @ParameterizedTest
    @CsvSource({"scalar", "vector"})
    void componentsPastTheNumericalRankAreFilledAlike(String backend) {
        int rank = 8;
        List<ClientUpdate> updates = updates(new int[] {2, 3}, new double[] {1, 2}, 32, null);
        Policy balanced = Policy.of(Strategy.SVD).withGlobalRank(rank).withSplit(Split.BALANCED);
        Map<String, Tensor> gb = aggregate(backend, balanced, updates);
        Map<String, Tensor> gf = aggregate(backend, balanced.withSplit(Split.FLEXLORA), updates);
        float[] bb = gb.get(Q + ".lora_B.weight").toFloatArray(), ab = gb.get(Q + ".lora_A.weight").toFloatArray();
        float[] af = gf.get(Q + ".lora_A.weight").toFloatArray();
        DMatrixRMaj dw = exact(updates, null);
        assertTrue(Dense64.relative(product(gb, 1), dw, dw) < 2e-6, "rank 5 <= 8: exact");
        for (int i = 5; i < rank; i++) {
            assertEquals(0, columnNorm(bb, rank, i), "B column " + i);
            assertEquals(1, rowNorm(ab, i), 1e-6, "A row " + i);
            for (int c = 0; c < N; c++) {
                assertEquals(af[i * N + c], ab[i * N + c], 1e-6f, "fill row " + i + " is the same for both splits");
            }
            for (int j = 0; j < i; j++) {
                double dot = 0;
                for (int c = 0; c < N; c++) {
                    dot += (double) ab[i * N + c] * ab[j * N + c];
                }
                assertEquals(0, dot / rowNorm(ab, j), 1e-5, "A row " + i + " against row " + j);
            }
        }
    }
}
