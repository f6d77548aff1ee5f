package io.fedlora.cli;

import static io.fedlora.cli.CliTest.MODULES;
import static io.fedlora.cli.CliTest.cli;
import static org.junit.jupiter.api.Assertions.assertEquals;

import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.Tensor;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.ejml.data.DMatrixRMaj;
import org.ejml.dense.row.factory.DecompositionFactory_DDRM;
import org.ejml.interfaces.decomposition.SingularValueDecomposition_F64;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * {@code aggregate --strategy svd|stack}: the written adapter, read back with PEFT's rules
 * ({@link ConfigScaleTest#peftDelta}), applies what the strategy means. With {@code --scale fold}
 * the target is {@code dW* = sum_k w_k s_k B_k A_k} (each client at its own LoRA scale): SVD writes
 * its best rank-R approximation, STACK writes it exactly. With {@code --scale none} the factors are
 * combined as they are and, by the command line's documented convention, applied at the clients'
 * weighted mean scale.
 */
class ProductScaleTest {

    @TempDir
    Path tmp;

    @ParameterizedTest(name = "{0} --scale {1}")
    @CsvSource({"svd,fold", "svd,none", "stack,fold", "stack,none"})
    void peftAppliesWhatTheStrategyMeans(String strategy, String scale) throws Exception {
        ConfigScaleTest fixtures = new ConfigScaleTest();
        fixtures.tmp = tmp;
        List<Path> clients = fixtures.clients(false);
        Path out = tmp.resolve("global");
        List<String> args = new ArrayList<>(List.of("aggregate", "--strategy", strategy, "--scale", scale,
                "--weights", "1,2,3,4", "-o", out.toString()));
        clients.forEach(c -> args.add(c.toString()));
        CliTest.Run run = cli(args.toArray(String[]::new));
        assertEquals(0, run.status(), run.err());
        AdapterConfig written = AdapterConfig.read(out.resolve(PeftAdapter.CONFIG));
        boolean fold = scale.equals("fold");
        for (String module : MODULES) {
            double[][] target = null;
            int maxRank = 0;
            double meanScale = 0, total = 0;
            for (int k = 0; k < clients.size(); k++) {
                try (PeftAdapter a = PeftAdapter.open(clients.get(k))) {
                    Tensor ta = a.tensors().get(module + ".lora_A.weight");
                    Tensor tb = a.tensors().get(module + ".lora_B.weight");
                    int r = (int) ta.dim(0), n = (int) ta.dim(1), m = (int) tb.dim(0);
                    maxRank = Math.max(maxRank, r);
                    double s = a.config().scaleFor(PeftAdapter.baseModelName(module), r);
                    double w = ConfigScaleTest.WEIGHTS[k];
                    meanScale += w * s;
                    total += w;
                    double[][] ba = ConfigScaleTest.product(tb.toFloatArray(), m, r, ta.toFloatArray(), n, r,
                            w * (fold ? s : 1));
                    if (target == null) {
                        target = ba;
                    } else {
                        for (int i = 0; i < m; i++) {
                            for (int j = 0; j < n; j++) {
                                target[i][j] += ba[i][j];
                            }
                        }
                    }
                }
            }
            double weightSum = total;
            ConfigScaleTest.scaleInPlace(target, 1 / weightSum * (fold ? 1 : meanScale / weightSum));
            double[][] expected = strategy.equals("svd") ? bestRank(target, maxRank) : target;
            ConfigScaleTest.assertClose(expected, ConfigScaleTest.peftDelta(out, written, module), module);
        }
    }

    /** The best rank-r approximation, by a dense SVD. */
    private static double[][] bestRank(double[][] x, int r) {
        int m = x.length, n = x[0].length;
        DMatrixRMaj d = new DMatrixRMaj(x);
        SingularValueDecomposition_F64<DMatrixRMaj> svd = DecompositionFactory_DDRM.svd(m, n, true, true, true);
        svd.decompose(d);
        double[] sigma = svd.getSingularValues();
        DMatrixRMaj u = svd.getU(null, false), v = svd.getV(null, false);
        Integer[] order = new Integer[sigma.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        java.util.Arrays.sort(order, (a, b) -> Double.compare(sigma[b], sigma[a]));
        double[][] out = new double[m][n];
        for (int c = 0; c < Math.min(r, order.length); c++) {
            int i = order[c];
            for (int row = 0; row < m; row++) {
                for (int col = 0; col < n; col++) {
                    out[row][col] += sigma[i] * u.get(row, i) * v.get(col, i);
                }
            }
        }
        return out;
    }
}
