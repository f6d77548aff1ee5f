package io.fedlora.product;

import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * The Gram kernels on the Java Vector API, float64 lanes. Loaded by class name only
 * ({@link ProductSpace#gramKernelsFor}), so the rest of fedlora runs without the incubator module.
 *
 * <p>Both kernels are register-blocked outer products: four rows of the result times three
 * vectors of columns (twelve accumulators) stay in registers while a panel's rows stream past, so
 * each loaded vector feeds four fused multiply-adds. Sums run in a different order from
 * {@link ScalarGram}, so results agree to float64 rounding, not bit for bit.
 */
public final class VectorGram implements GramKernels {

    private static final VectorSpecies<Double> DOUBLES = DoubleVector.SPECIES_PREFERRED;
    private static final int LANES = DOUBLES.length();
    private static final int WIDE = 3 * LANES;

    public VectorGram() {
        if (LANES < 2) {
            throw new UnsupportedOperationException("the Vector API reports only " + DOUBLES.vectorBitSize()
                    + "-bit vectors here (C2 disabled or no SIMD); scalar loops are as fast");
        }
    }

    @Override
    public String name() {
        return "vector";
    }

    /**
     * Panel rows per sweep: 64 rows of one column tile (3 vectors = 3 cache lines a row, 12 KiB)
     * stay in L1 while every 4-row block at or above it streams past (one line a row from L2).
     * Sweeping all 256 rows of a panel per tile instead read the tile from L2 on every row and
     * ran at a third of the rate.
     */
    private static final int ROW_CHUNK = 64;

    @Override
    public void syrkUpper(double[] gram, double[] x, int rows, int s) {
        for (int r0 = 0; r0 < rows; r0 += ROW_CHUNK) {
            int r1 = Math.min(rows, r0 + ROW_CHUNK);
            int q = 0;
            for (; q + WIDE <= s; q += WIDE) {
                columnTile(gram, x, r0, r1, s, q, WIDE);
            }
            for (; q + LANES <= s; q += LANES) {
                columnTile(gram, x, r0, r1, s, q, LANES);
            }
            for (int p = 0; p < s && q < s; p++) {
                scalarRow(gram, x, r0, r1, s, p, Math.max(q, p), s);
            }
        }
    }

    /**
     * Columns {@code q .. q + width} of the upper triangle, rows {@code r0 .. r1} of the panel: every
     * 4-row block that reaches them. Entries left of the diagonal inside a block are computed too
     * (the caller mirrors the upper triangle over them); each entry on or above it exactly once.
     */
    private static void columnTile(double[] gram, double[] x, int r0, int r1, int s, int q, int width) {
        int end = q + width;
        for (int p = 0; p < end; p += 4) {
            if (p + 4 <= s) {
                if (width == WIDE) {
                    tile4x3(gram, x, r0, r1, s, p, q);
                } else {
                    tile4x1(gram, x, r0, r1, s, p, q);
                }
            } else {
                for (int pp = p; pp < s; pp++) {
                    scalarRow(gram, x, r0, r1, s, pp, Math.max(q, pp), end);
                }
            }
        }
    }

    /** gram[p][q0..q1) += sum_{r0 <= r < r1} x[r][p] * x[r][q]: the tails. */
    private static void scalarRow(double[] gram, double[] x, int r0, int r1, int s, int p, int q0, int q1) {
        for (int r = r0; r < r1; r++) {
            double xp = x[r * s + p];
            for (int q = q0; q < q1; q++) {
                gram[p * s + q] = Math.fma(xp, x[r * s + q], gram[p * s + q]);
            }
        }
    }

    private static void tile4x3(double[] gram, double[] x, int r0, int r1, int s, int p, int q) {
        DoubleVector a00 = DoubleVector.zero(DOUBLES), a01 = a00, a02 = a00;
        DoubleVector a10 = a00, a11 = a00, a12 = a00;
        DoubleVector a20 = a00, a21 = a00, a22 = a00;
        DoubleVector a30 = a00, a31 = a00, a32 = a00;
        for (int r = r0; r < r1; r++) {
            int row = r * s;
            DoubleVector v0 = DoubleVector.fromArray(DOUBLES, x, row + q);
            DoubleVector v1 = DoubleVector.fromArray(DOUBLES, x, row + q + LANES);
            DoubleVector v2 = DoubleVector.fromArray(DOUBLES, x, row + q + 2 * LANES);
            DoubleVector x0 = DoubleVector.broadcast(DOUBLES, x[row + p]);
            a00 = v0.fma(x0, a00);
            a01 = v1.fma(x0, a01);
            a02 = v2.fma(x0, a02);
            DoubleVector x1 = DoubleVector.broadcast(DOUBLES, x[row + p + 1]);
            a10 = v0.fma(x1, a10);
            a11 = v1.fma(x1, a11);
            a12 = v2.fma(x1, a12);
            DoubleVector x2 = DoubleVector.broadcast(DOUBLES, x[row + p + 2]);
            a20 = v0.fma(x2, a20);
            a21 = v1.fma(x2, a21);
            a22 = v2.fma(x2, a22);
            DoubleVector x3 = DoubleVector.broadcast(DOUBLES, x[row + p + 3]);
            a30 = v0.fma(x3, a30);
            a31 = v1.fma(x3, a31);
            a32 = v2.fma(x3, a32);
        }
        addInto(gram, p * s + q, a00, a01, a02);
        addInto(gram, (p + 1) * s + q, a10, a11, a12);
        addInto(gram, (p + 2) * s + q, a20, a21, a22);
        addInto(gram, (p + 3) * s + q, a30, a31, a32);
    }

    private static void addInto(double[] gram, int at, DoubleVector v0, DoubleVector v1, DoubleVector v2) {
        DoubleVector.fromArray(DOUBLES, gram, at).add(v0).intoArray(gram, at);
        DoubleVector.fromArray(DOUBLES, gram, at + LANES).add(v1).intoArray(gram, at + LANES);
        DoubleVector.fromArray(DOUBLES, gram, at + 2 * LANES).add(v2).intoArray(gram, at + 2 * LANES);
    }

    private static void tile4x1(double[] gram, double[] x, int r0, int r1, int s, int p, int q) {
        DoubleVector a0 = DoubleVector.zero(DOUBLES), a1 = a0, a2 = a0, a3 = a0;
        for (int r = r0; r < r1; r++) {
            int row = r * s;
            DoubleVector v = DoubleVector.fromArray(DOUBLES, x, row + q);
            a0 = v.fma(DoubleVector.broadcast(DOUBLES, x[row + p]), a0);
            a1 = v.fma(DoubleVector.broadcast(DOUBLES, x[row + p + 1]), a1);
            a2 = v.fma(DoubleVector.broadcast(DOUBLES, x[row + p + 2]), a2);
            a3 = v.fma(DoubleVector.broadcast(DOUBLES, x[row + p + 3]), a3);
        }
        DoubleVector[] acc = {a0, a1, a2, a3};
        for (int i = 0; i < 4; i++) {
            int at = (p + i) * s + q;
            DoubleVector.fromArray(DOUBLES, gram, at).add(acc[i]).intoArray(gram, at);
        }
    }

    @Override
    public void gemm(double[] out, double[] x, int rows, int s, double[] coef, int t) {
        int r = 0;
        for (; r + 4 <= rows; r += 4) {
            int j = 0;
            for (; j + WIDE <= t; j += WIDE) {
                gemm4x3(out, x, s, coef, t, r, j);
            }
            for (; j + LANES <= t; j += LANES) {
                gemm4x1(out, x, s, coef, t, r, j);
            }
            for (int rr = r; rr < r + 4; rr++) {
                scalarGemm(out, x, s, coef, t, rr, j);
            }
        }
        for (; r < rows; r++) {
            scalarGemm(out, x, s, coef, t, r, 0);
        }
    }

    /** out[r][j0..t) = x[r] . coef[:, j]: the tails. */
    private static void scalarGemm(double[] out, double[] x, int s, double[] coef, int t, int r, int j0) {
        for (int j = j0; j < t; j++) {
            double sum = 0;
            for (int p = 0; p < s; p++) {
                sum = Math.fma(x[r * s + p], coef[p * t + j], sum);
            }
            out[r * t + j] = sum;
        }
    }

    private static void gemm4x3(double[] out, double[] x, int s, double[] coef, int t, int r, int j) {
        DoubleVector a00 = DoubleVector.zero(DOUBLES), a01 = a00, a02 = a00;
        DoubleVector a10 = a00, a11 = a00, a12 = a00;
        DoubleVector a20 = a00, a21 = a00, a22 = a00;
        DoubleVector a30 = a00, a31 = a00, a32 = a00;
        int x0 = r * s, x1 = x0 + s, x2 = x1 + s, x3 = x2 + s;
        for (int p = 0; p < s; p++) {
            int c = p * t + j;
            DoubleVector v0 = DoubleVector.fromArray(DOUBLES, coef, c);
            DoubleVector v1 = DoubleVector.fromArray(DOUBLES, coef, c + LANES);
            DoubleVector v2 = DoubleVector.fromArray(DOUBLES, coef, c + 2 * LANES);
            DoubleVector b0 = DoubleVector.broadcast(DOUBLES, x[x0 + p]);
            a00 = v0.fma(b0, a00);
            a01 = v1.fma(b0, a01);
            a02 = v2.fma(b0, a02);
            DoubleVector b1 = DoubleVector.broadcast(DOUBLES, x[x1 + p]);
            a10 = v0.fma(b1, a10);
            a11 = v1.fma(b1, a11);
            a12 = v2.fma(b1, a12);
            DoubleVector b2 = DoubleVector.broadcast(DOUBLES, x[x2 + p]);
            a20 = v0.fma(b2, a20);
            a21 = v1.fma(b2, a21);
            a22 = v2.fma(b2, a22);
            DoubleVector b3 = DoubleVector.broadcast(DOUBLES, x[x3 + p]);
            a30 = v0.fma(b3, a30);
            a31 = v1.fma(b3, a31);
            a32 = v2.fma(b3, a32);
        }
        store(out, r * t + j, a00, a01, a02);
        store(out, (r + 1) * t + j, a10, a11, a12);
        store(out, (r + 2) * t + j, a20, a21, a22);
        store(out, (r + 3) * t + j, a30, a31, a32);
    }

    private static void store(double[] out, int at, DoubleVector v0, DoubleVector v1, DoubleVector v2) {
        v0.intoArray(out, at);
        v1.intoArray(out, at + LANES);
        v2.intoArray(out, at + 2 * LANES);
    }

    private static void gemm4x1(double[] out, double[] x, int s, double[] coef, int t, int r, int j) {
        DoubleVector a0 = DoubleVector.zero(DOUBLES), a1 = a0, a2 = a0, a3 = a0;
        int x0 = r * s;
        for (int p = 0; p < s; p++) {
            DoubleVector v = DoubleVector.fromArray(DOUBLES, coef, p * t + j);
            a0 = v.fma(DoubleVector.broadcast(DOUBLES, x[x0 + p]), a0);
            a1 = v.fma(DoubleVector.broadcast(DOUBLES, x[x0 + s + p]), a1);
            a2 = v.fma(DoubleVector.broadcast(DOUBLES, x[x0 + 2 * s + p]), a2);
            a3 = v.fma(DoubleVector.broadcast(DOUBLES, x[x0 + 3 * s + p]), a3);
        }
        a0.intoArray(out, r * t + j);
        a1.intoArray(out, (r + 1) * t + j);
        a2.intoArray(out, (r + 2) * t + j);
        a3.intoArray(out, (r + 3) * t + j);
    }
}
