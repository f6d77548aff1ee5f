package io.fedlora.product;

import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.ejml.data.DMatrixRMaj;
import org.ejml.dense.row.CommonOps_DDRM;
import org.ejml.dense.row.NormOps_DDRM;
import org.ejml.dense.row.factory.DecompositionFactory_DDRM;
import org.ejml.interfaces.decomposition.SingularValueDecomposition_F64;

/**
 * The dense float64 reference for the product-space tests: forms the m x n matrices the library
 * never forms (on small shapes), straight from the definitions, and takes a full dense SVD.
 */
final class Dense64 {
    private Dense64() {
    }

    /** Random float32 client factors; {@code spread} scales client k by spread^k (1 = similar sizes). */
    static List<ModuleFactors> clients(long seed, int m, int n, int[] ranks, double[] weights, double[] scales) {
        Random rnd = new Random(seed);
        List<ModuleFactors> out = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            float[] a = new float[ranks[k] * n], b = new float[m * ranks[k]];
            for (int i = 0; i < a.length; i++) {
                a[i] = (float) rnd.nextGaussian();
            }
            for (int i = 0; i < b.length; i++) {
                b[i] = (float) (0.1 * rnd.nextGaussian());
            }
            out.add(new ModuleFactors("client-" + k, Matrix.of(a, ranks[k], n), Matrix.of(b, m, ranks[k]), weights[k],
                    scales == null ? 1 : scales[k]));
        }
        return out;
    }

    static double[] ones(int k) {
        double[] w = new double[k];
        Arrays.fill(w, 1);
        return w;
    }

    static DMatrixRMaj of(Matrix x) {
        DMatrixRMaj d = new DMatrixRMaj(x.rows(), x.cols());
        for (int i = 0; i < x.rows(); i++) {
            for (int j = 0; j < x.cols(); j++) {
                d.set(i, j, x.get(i, j));
            }
        }
        return d;
    }

    static DMatrixRMaj of(float[] v, int rows, int cols) {
        DMatrixRMaj d = new DMatrixRMaj(rows, cols);
        for (int i = 0; i < v.length; i++) {
            d.data[i] = v[i];
        }
        return d;
    }

    /** {@code sum_k w_k s_k B_k A_k}: the exact weighted average. */
    static DMatrixRMaj exactAverage(List<ModuleFactors> clients) {
        double total = clients.stream().mapToDouble(ModuleFactors::weight).sum();
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        DMatrixRMaj sum = new DMatrixRMaj(m, n);
        for (ModuleFactors c : clients) {
            DMatrixRMaj prod = new DMatrixRMaj(m, n);
            CommonOps_DDRM.mult(of(c.b()), of(c.a()), prod);
            CommonOps_DDRM.addEquals(sum, c.weight() / total * c.scale(), prod);
        }
        return sum;
    }

    /** {@code sum_i sum_{k owns i} p_k s_k b_ki a_ki^T / P_i}: the rank-aware average. */
    static DMatrixRMaj rankAwareAverage(List<ModuleFactors> clients) {
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        int maxRank = clients.stream().mapToInt(ModuleFactors::rank).max().orElse(0);
        double[] owner = new double[maxRank];
        for (ModuleFactors c : clients) {
            for (int i = 0; i < c.rank(); i++) {
                owner[i] += c.weight();
            }
        }
        DMatrixRMaj sum = new DMatrixRMaj(m, n);
        for (ModuleFactors c : clients) {
            for (int i = 0; i < c.rank(); i++) {
                if (owner[i] == 0) {
                    continue;
                }
                double f = c.weight() * c.scale() / owner[i];
                for (int r = 0; r < m; r++) {
                    for (int col = 0; col < n; col++) {
                        sum.data[r * n + col] += f * c.b().get(r, i) * c.a().get(i, col);
                    }
                }
            }
        }
        return sum;
    }

    /** A full dense SVD, descending, with the sign rule applied (largest |entry| of each U column positive). */
    record Svd(double[] sigma, DMatrixRMaj u, DMatrixRMaj v) {
        /** The best rank-r approximation. */
        DMatrixRMaj truncated(int r) {
            int m = u.numRows, n = v.numRows;
            DMatrixRMaj out = new DMatrixRMaj(m, n);
            for (int i = 0; i < Math.min(r, sigma.length); i++) {
                for (int row = 0; row < m; row++) {
                    double f = sigma[i] * u.get(row, i);
                    for (int col = 0; col < n; col++) {
                        out.data[row * n + col] += f * v.get(col, i);
                    }
                }
            }
            return out;
        }
    }

    static Svd svd(DMatrixRMaj x) {
        SingularValueDecomposition_F64<DMatrixRMaj> svd = DecompositionFactory_DDRM.svd(x.numRows, x.numCols, true,
                true, true);
        if (!svd.decompose(x.copy())) {
            throw new AssertionError("dense SVD failed");
        }
        double[] values = svd.getSingularValues();
        DMatrixRMaj u = svd.getU(null, false), v = svd.getV(null, false);
        int k = svd.numberOfSingularValues();
        Integer[] order = new Integer[k];
        Arrays.setAll(order, i -> i);
        Arrays.sort(order, (a, b) -> Double.compare(values[b], values[a]));
        double[] sigma = new double[k];
        DMatrixRMaj us = new DMatrixRMaj(x.numRows, k), vs = new DMatrixRMaj(x.numCols, k);
        for (int i = 0; i < k; i++) {
            sigma[i] = values[order[i]];
            int best = 0;
            for (int r = 0; r < x.numRows; r++) {
                if (Math.abs(u.get(r, order[i])) > Math.abs(u.get(best, order[i]))) {
                    best = r;
                }
            }
            double sign = u.get(best, order[i]) < 0 ? -1 : 1;
            for (int r = 0; r < x.numRows; r++) {
                us.set(r, i, sign * u.get(r, order[i]));
            }
            for (int r = 0; r < x.numCols; r++) {
                vs.set(r, i, sign * v.get(r, order[i]));
            }
        }
        return new Svd(sigma, us, vs);
    }

    /** {@code scale * B A} of float32 factors, in double. */
    static DMatrixRMaj product(float[] b, float[] a, int m, int rank, int n, double scale) {
        DMatrixRMaj out = new DMatrixRMaj(m, n);
        CommonOps_DDRM.mult(of(b, m, rank), of(a, rank, n), out);
        CommonOps_DDRM.scale(scale, out);
        return out;
    }

    /** ||x - y||_F / ||ref||_F. */
    static double relative(DMatrixRMaj x, DMatrixRMaj y, DMatrixRMaj ref) {
        DMatrixRMaj d = x.copy();
        CommonOps_DDRM.subtractEquals(d, y);
        return NormOps_DDRM.normF(d) / NormOps_DDRM.normF(ref);
    }

    /** ||x - y||_F / ||x||_F with the zero conventions of the fidelity report. */
    static double error(DMatrixRMaj target, DMatrixRMaj approx) {
        DMatrixRMaj d = target.copy();
        CommonOps_DDRM.subtractEquals(d, approx);
        double den = NormOps_DDRM.normF(target), num = NormOps_DDRM.normF(d);
        return den == 0 ? (num == 0 ? 0 : Double.POSITIVE_INFINITY) : num / den;
    }

    /** Dense factor average of DESIGN §2 in double, as {@code s_out B A} (s_out cancels), v_k given. */
    static DMatrixRMaj factorAverage(List<ModuleFactors> clients, double[] v, int rank, boolean replication) {
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        double total = Arrays.stream(v).sum();
        DMatrixRMaj out = new DMatrixRMaj(m, n);
        for (int i = 0; i < rank; i++) {
            double d = 0;
            for (int k = 0; k < clients.size(); k++) {
                if (i < clients.get(k).rank()) {
                    d += v[k];
                }
            }
            if (!replication) {
                d = total;
            }
            if (d == 0) {
                continue;
            }
            double[] bcol = new double[m], arow = new double[n];
            for (int k = 0; k < clients.size(); k++) {
                ModuleFactors c = clients.get(k);
                if (i >= c.rank()) {
                    continue;
                }
                for (int r = 0; r < m; r++) {
                    bcol[r] += v[k] * c.scale() * c.b().get(r, i) / d;
                }
                for (int col = 0; col < n; col++) {
                    arow[col] += v[k] * c.a().get(i, col) / d;
                }
            }
            for (int r = 0; r < m; r++) {
                for (int col = 0; col < n; col++) {
                    out.data[r * n + col] += bcol[r] * arow[col];
                }
            }
        }
        return out;
    }

    /** ||B_k A_k||_F, densely. */
    static double updateNorm(ModuleFactors c) {
        DMatrixRMaj prod = new DMatrixRMaj(c.b().rows(), c.a().cols());
        CommonOps_DDRM.mult(of(c.b()), of(c.a()), prod);
        return NormOps_DDRM.normF(prod);
    }
}
