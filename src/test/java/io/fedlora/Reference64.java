package io.fedlora;

import io.fedlora.tensor.Tensor;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * DESIGN §2 written out in float64, straight from the definitions and independent of the kernels:
 * the yardstick every backend's float32 result is held against.
 */
public final class Reference64 {
    private Reference64() {
    }

    /** The global A ([R, n]) and B ([m, R]) of one module, in double. */
    public record Module(double[][] a, double[][] b) {
    }

    public static Module aggregate(Strategy strategy, int globalRank, List<double[][]> as, List<double[][]> bs,
            double[] weights) {
        int k = as.size();
        int maxRank = 0;
        for (double[][] a : as) {
            maxRank = Math.max(maxRank, a.length);
        }
        int rank = globalRank > 0 ? globalRank : maxRank;
        int n = as.get(0)[0].length, m = bs.get(0).length;
        double[] p = weights.clone();
        if (strategy == Strategy.NORM) {
            for (int c = 0; c < k; c++) {
                p[c] = Math.sqrt(denseNormSquared(as.get(c), bs.get(c)));
            }
        }
        double total = 0;
        double[] owner = new double[rank];
        for (int c = 0; c < k; c++) {
            total += p[c];
            for (int i = 0; i < Math.min(rank, as.get(c).length); i++) {
                owner[i] += p[c];
            }
        }
        double[][] a = new double[rank][n];
        double[][] b = new double[m][rank];
        for (int c = 0; c < k; c++) {
            int kept = Math.min(rank, as.get(c).length);
            for (int i = 0; i < kept; i++) {
                for (int j = 0; j < n; j++) {
                    a[i][j] += p[c] * as.get(c)[i][j];
                }
                for (int row = 0; row < m; row++) {
                    b[row][i] += p[c] * bs.get(c)[row][i];
                }
            }
        }
        for (int i = 0; i < rank; i++) {
            double divisor = strategy == Strategy.REPLICATION ? owner[i] : total;
            double s = divisor > 0 ? 1 / divisor : 0;
            for (int j = 0; j < n; j++) {
                a[i][j] *= s;
            }
            for (int row = 0; row < m; row++) {
                b[row][i] *= s;
            }
        }
        return new Module(a, b);
    }

    /** ||B A||_F^2 by forming the m x n product: the definition NORM's Gram identity must match. */
    public static double denseNormSquared(double[][] a, double[][] b) {
        double sum = 0;
        for (double[] bRow : b) {
            for (int j = 0; j < a[0].length; j++) {
                double v = 0;
                for (int i = 0; i < a.length; i++) {
                    v += bRow[i] * a[i][j];
                }
                sum += v * v;
            }
        }
        return sum;
    }

    /** A tensor's values as double[rows][cols]. */
    public static double[][] matrix(Tensor t) {
        int rows = (int) t.dim(0), cols = (int) t.dim(1);
        double[][] out = new double[rows][cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                out[i][j] = t.get((long) i * cols + j);
            }
        }
        return out;
    }

    /** The reference for every module of a list of clients (all holding every module). */
    public static Map<String, Module> aggregate(Strategy strategy, int globalRank, List<ClientUpdate> clients) {
        Map<String, Module> out = new LinkedHashMap<>();
        for (String key : clients.get(0).tensors().keySet()) {
            if (!key.endsWith(".lora_A.weight")) {
                continue;
            }
            String module = key.substring(0, key.length() - ".lora_A.weight".length());
            List<double[][]> as = new ArrayList<>(), bs = new ArrayList<>();
            double[] w = new double[clients.size()];
            for (int c = 0; c < clients.size(); c++) {
                as.add(matrix(clients.get(c).tensors().get(module + ".lora_A.weight")));
                bs.add(matrix(clients.get(c).tensors().get(module + ".lora_B.weight")));
                w[c] = clients.get(c).weight();
            }
            out.put(module, aggregate(strategy, globalRank, as, bs, w));
        }
        return out;
    }

    /** max |got - want| / max |want|: the normwise relative error DESIGN §2's 1e-5 is measured in. */
    public static double relativeError(Tensor got, double[][] want) {
        double maxDiff = 0, maxRef = 0;
        int cols = want.length == 0 ? 0 : want[0].length;
        for (int i = 0; i < want.length; i++) {
            for (int j = 0; j < cols; j++) {
                maxDiff = Math.max(maxDiff, Math.abs(got.get((long) i * cols + j) - want[i][j]));
                maxRef = Math.max(maxRef, Math.abs(want[i][j]));
            }
        }
        return maxRef == 0 ? maxDiff : maxDiff / maxRef;
    }
}
