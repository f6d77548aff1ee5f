package io.fedlora.product;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.TestBackends;
import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.stream.IntStream;
import org.ejml.data.DMatrixRMaj;
import org.ejml.dense.row.CommonOps_DDRM;
import org.ejml.dense.row.NormOps_DDRM;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Product-space aggregation against the dense float64 reference ({@link Dense64}) on small shapes,
 * with the tolerances of PRODUCT_SPACE.md §8 (float32 data, float64 reference on the same
 * float32 values). Every parameterized test runs on the Gram kernels of the test backends
 * ({@link TestBackends}: scalar and vector; cuda, the cuBLAS ones, in the build's cuda execution).
 */
class ProductSpaceTest {
    private static Kernels cuda;

    static List<String> kernels() {
        return TestBackends.names();
    }

    private static ProductSpace space(String kernels) {
        if ("cuda".equals(kernels)) {
            if (cuda == null) {
                cuda = Backends.create("cuda", 1);
            }
            return new ProductSpace(ProductSpace.gramKernelsFor(cuda), 2);
        }
        return new ProductSpace("scalar".equals(kernels) ? new ScalarGram() : new VectorGram(), 2);
    }

    @AfterAll
    static void closeCuda() {
        if (cuda != null) {
            cuda.close();
            cuda = null;
        }
    }

    /** ||U||_2 ||V||_2 / sigma_1 for U = Bs diag(w s), V = As: the SVD's cancellation factor. */
    private static double kappa(List<ModuleFactors> clients, double sigma1) {
        double total = clients.stream().mapToDouble(ModuleFactors::weight).sum();
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        int s = clients.stream().mapToInt(ModuleFactors::rank).sum();
        DMatrixRMaj u = new DMatrixRMaj(m, s), v = new DMatrixRMaj(s, n);
        int o = 0;
        for (ModuleFactors c : clients) {
            for (int i = 0; i < c.rank(); i++) {
                for (int r = 0; r < m; r++) {
                    u.set(r, o + i, c.b().get(r, i) * c.weight() / total * c.scale());
                }
                for (int col = 0; col < n; col++) {
                    v.set(o + i, col, c.a().get(i, col));
                }
            }
            o += c.rank();
        }
        return Dense64.svd(u).sigma()[0] * Dense64.svd(v).sigma()[0] / sigma1;
    }

    /** sigma, product and sign-fixed factors of one SVD result against the dense reference. */
    private static void checkAgainstDense(List<ModuleFactors> clients, LowRank out, int rank, double outScale,
            Split split) {
        DMatrixRMaj exact = Dense64.exactAverage(clients);
        Dense64.Svd ref = Dense64.svd(exact);
        int t = out.numericalRank();
        for (int i = 0; i < t; i++) {
            assertEquals(ref.sigma()[i], out.sigma()[i], 1e-12 * ref.sigma()[0], "sigma " + i);
        }
        double kappa = kappa(clients, ref.sigma()[0]);
        DMatrixRMaj product = Dense64.product(out.b(), out.a(), out.m(), out.rank(), out.n(), outScale);
        double productError = Dense64.relative(product, ref.truncated(rank), exact);
        assertTrue(productError <= 2e-6 + 5e-8 * kappa, "||sBA - T_R|| / ||dW*|| = " + productError + ", kappa " + kappa);
        // Sign-fixed factors: column i of B is u_i (sigma_i / s)^beta, row i of A is (sigma_i / s)^(1-beta) v_i.
        for (int i = 0; i < t; i++) {
            double size = ref.sigma()[i] / outScale;
            double fb = split == Split.FLEXLORA ? size : Math.sqrt(size);
            double fa = split == Split.FLEXLORA ? 1 : Math.sqrt(size);
            double gap = Math.min(i == 0 ? Double.MAX_VALUE : ref.sigma()[i - 1] - ref.sigma()[i],
                    ref.sigma()[i] - ref.sigma()[i + 1]);
            double tol = 1e-5 * ref.sigma()[0] / gap;
            for (int r = 0; r < out.m(); r++) {
                assertEquals(ref.u().get(r, i) * fb, out.b()[r * out.rank() + i], tol * fb, "B[" + r + ", " + i + "]");
            }
            for (int c = 0; c < out.n(); c++) {
                assertEquals(ref.v().get(c, i) * fa, out.a()[i * out.n() + c], tol * fa, "A[" + i + ", " + c + "]");
            }
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void gramRouteMatchesDenseSvd(String kernels) {
        // 61 x 47 with S = 3 + 5 + 8 + 2 + 7 = 25 <= 47: the Gram route; ranks not multiples of the vector width.
        List<ModuleFactors> clients = Dense64.clients(1, 61, 47, new int[] {3, 5, 8, 2, 7},
                new double[] {1, 2, 0.5, 3, 1}, null);
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("q", clients, 6, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(Route.GRAM, out.route());
            assertEquals(6, out.numericalRank());
            checkAgainstDense(clients, out, 6, 1.0, Split.FLEXLORA);
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void foldedScalesAndBalancedSplit(String kernels) {
        int[] ranks = {4, 8, 16};
        double[] scales = {16.0 / 4, 16.0 / 8, 16.0 / 16};
        List<ModuleFactors> clients = Dense64.clients(2, 70, 40, ranks, new double[] {3, 1, 2}, scales);
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("v", clients, 10, Split.BALANCED, 16.0 / 10, Fill.ORTH);
            checkAgainstDense(clients, out, 10, 16.0 / 10, Split.BALANCED);
            // Balanced: ||B[:, i]|| = ||A[i]||.
            for (int i = 0; i < 10; i++) {
                double nb = 0, na = 0;
                for (int r = 0; r < 70; r++) {
                    nb += out.b()[r * 10 + i] * out.b()[r * 10 + i];
                }
                for (int c = 0; c < 40; c++) {
                    na += out.a()[i * 40 + c] * out.a()[i * 40 + c];
                }
                assertEquals(Math.sqrt(na), Math.sqrt(nb), 1e-5 * Math.sqrt(na));
            }
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void qrRouteWhenStackRankExceedsTheShape(String kernels) {
        // S = 4 * 6 = 24 > min(30, 18): the Gram route would solve 24 x 24 problems for an 18-rank update.
        List<ModuleFactors> clients = Dense64.clients(3, 30, 18, new int[] {6, 6, 6, 6}, new double[] {1, 2, 3, 4}, null);
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("o", clients, 8, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(Route.QR, out.route());
            checkAgainstDense(clients, out, 8, 1.0, Split.FLEXLORA);
            // At R = min(m, n) = 18 the factorisation reproduces dW* (its rank is 18).
            LowRank full = ps.svd("o", clients, 18, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(18, full.numericalRank());
            DMatrixRMaj exact = Dense64.exactAverage(clients);
            double err = Dense64.relative(Dense64.product(full.b(), full.a(), 30, 18, 18, 1), exact, exact);
            assertTrue(err < 1e-6, "error " + err);
        }
    }

    @Test
    void gramAndQrRoutesAgreeOnFactorsAfterTheSignRule() {
        List<ModuleFactors> clients = Dense64.clients(4, 40, 36, new int[] {4, 9, 3}, new double[] {1, 1, 2}, null);
        try (ProductSpace ps = space("vector")) {
            LowRank gram = ps.svd(ps.grams("m", clients), clients, 7, Split.FLEXLORA, 1.0, Fill.ORTH);
            LowRank qr = ps.qrRoute("m", clients, 7, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(Route.GRAM, gram.route());
            assertEquals(Route.QR, qr.route());
            checkAgainstDense(clients, gram, 7, 1.0, Split.FLEXLORA);
            checkAgainstDense(clients, qr, 7, 1.0, Split.FLEXLORA);
            for (int i = 0; i < gram.b().length; i++) {
                assertEquals(gram.b()[i], qr.b()[i], 1e-5, "B entry " + i + ": routes differ");
            }
            for (int i = 0; i < gram.a().length; i++) {
                assertEquals(gram.a()[i], qr.a()[i], 1e-5, "A entry " + i + ": routes differ");
            }
            assertEquals(gram.eckartYoung(7), qr.eckartYoung(7), 1e-9);
            // A permuted client order gives the same factors.
            List<ModuleFactors> permuted = new ArrayList<>(clients);
            Collections.reverse(permuted);
            LowRank other = ps.svd("m", permuted, 7, Split.FLEXLORA, 1.0, Fill.ORTH);
            for (int i = 0; i < gram.b().length; i++) {
                assertEquals(gram.b()[i], other.b()[i], 1e-5);
            }
            for (int i = 0; i < gram.a().length; i++) {
                assertEquals(gram.a()[i], other.a()[i], 1e-5);
            }
        }
    }

    @Test
    void choleskyAndEigenRootsGiveTheSameFactors() {
        // Duplicates make both Gram matrices singular: the pivoted Cholesky stops at their rank.
        List<ModuleFactors> base = Dense64.clients(19, 44, 38, new int[] {3, 7, 5}, new double[] {1, 2, 1}, null);
        List<ModuleFactors> clients = new ArrayList<>(base);
        clients.add(base.get(1));
        try (ProductSpace ps = space("vector")) {
            // R = 20 above the true rank 15: the floor decides what is kept (without it the eigen
            // root's round-off eigenvalues came through as extra components).
            LowRank cholesky = ps.svd("c", clients, 20, Split.FLEXLORA, 1.0, Fill.ORTH);
            LowRank eigen;
            System.setProperty(ProductSpace.ROOT_PROPERTY, "eigen");
            try {
                eigen = ps.svd("c", clients, 20, Split.FLEXLORA, 1.0, Fill.ORTH);
            } finally {
                System.clearProperty(ProductSpace.ROOT_PROPERTY);
            }
            assertEquals(15, cholesky.numericalRank());
            assertEquals(15, eigen.numericalRank());
            checkAgainstDense(clients, cholesky, 20, 1.0, Split.FLEXLORA);
            checkAgainstDense(clients, eigen, 20, 1.0, Split.FLEXLORA);
            // The root of the Gram matrix has its numerical rank as width: 15 of 22 (the duplicate).
            assertEquals(15, ProductSpace.choleskyRoot(DMatrixRMaj.wrap(22, 22, ps.grams("c", clients).gramA().clone()))
                    .factor().numCols);
            ProductSpace.Root root = ProductSpace.choleskyRoot(Dense64.of(Matrix.of(new float[] {4, 2, 2, 1}, 2, 2)));
            assertEquals(1, root.factor().numCols, "a rank-1 Gram matrix has a rank-1 root");
            assertEquals(Math.sqrt(5), root.norm(), 1e-12);
        }
    }

    // ---- DESIGN §9 edge cases -------------------------------------------------------------------

    @ParameterizedTest
    @MethodSource("kernels")
    void duplicateAndZeroClientsKeepTheTrueRank(String kernels) {
        List<ModuleFactors> base = Dense64.clients(5, 50, 45, new int[] {5, 9}, new double[] {1, 2}, null);
        // The zero client first: an unpivoted Cholesky would stop at its zero pivot and find rank 0.
        List<ModuleFactors> clients = new ArrayList<>();
        clients.add(new ModuleFactors("zero", Matrix.of(new float[3 * 45], 3, 45), Matrix.of(new float[50 * 3], 50, 3), 2, 1));
        clients.addAll(base);
        clients.addAll(base);                       // duplicates: S = 31, true rank 14
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("d", clients, 20, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(14, out.numericalRank());
            DMatrixRMaj exact = Dense64.exactAverage(clients);
            double err = Dense64.relative(Dense64.product(out.b(), out.a(), 50, 20, 45, 1), exact, exact);
            assertTrue(err < 2e-6, "rank-14 update not reproduced: " + err);
            assertFilled(out, 45);
        }
    }

    /** Components past the numerical rank: B columns zero, A rows orthonormal and orthogonal to the kept ones. */
    private static void assertFilled(LowRank out, int n) {
        for (int r = 0; r < out.m(); r++) {
            for (int i = out.numericalRank(); i < out.rank(); i++) {
                assertEquals(0f, out.b()[r * out.rank() + i], "B[" + r + ", " + i + "]");
            }
        }
        for (int i = 0; i < out.rank(); i++) {
            for (int j = Math.max(i, out.numericalRank()); j < out.rank(); j++) {
                double dot = 0;
                for (int c = 0; c < n; c++) {
                    dot += (double) out.a()[i * n + c] * out.a()[j * n + c];
                }
                // FLEXLORA: kept A rows are orthonormal too, so the whole A has orthonormal rows.
                assertEquals(i == j ? 1 : 0, dot, 1e-6, "A rows " + i + ", " + j);
            }
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void rankAboveStackRankFillsOrthonormalRows(String kernels) {
        List<ModuleFactors> clients = Dense64.clients(6, 40, 33, new int[] {4, 6}, new double[] {1, 1}, null);
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("r", clients, 32, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(10, out.numericalRank());
            assertFilled(out, 33);
            LowRank zero = ps.svd("r", clients, 32, Split.FLEXLORA, 1.0, Fill.ZERO);
            for (int i = 10 * 33; i < 32 * 33; i++) {
                assertEquals(0f, zero.a()[i]);
            }
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void allZeroUpdatesGiveRankZero(String kernels) {
        // Round 0 of PEFT training: B = 0.
        List<ModuleFactors> clients = new ArrayList<>();
        for (ModuleFactors c : Dense64.clients(7, 20, 16, new int[] {2, 3}, new double[] {1, 1}, null)) {
            clients.add(new ModuleFactors(c.clientId(), c.a(), Matrix.of(new float[20 * c.rank()], 20, c.rank()), 1, 1));
        }
        try (ProductSpace ps = space(kernels)) {
            LowRank out = ps.svd("z", clients, 4, Split.FLEXLORA, 1.0, Fill.ORTH);
            assertEquals(0, out.numericalRank());
            assertFilled(out, 16);
            Grams g = ps.grams("z", clients);
            assertEquals(0, ps.fidelity(g, out.coefficients(), new int[] {2}).exact());
            // A nonzero output against a zero target: infinitely wrong.
            List<ModuleFactors> other = Dense64.clients(8, 20, 16, new int[] {2, 3}, new double[] {1, 1}, null);
            Coefficients nonzero = Coefficients.factorAverage(new int[] {2, 3}, new double[] {1, 1}, new double[] {1, 1}, 3, false);
            // The same Grams but coefficients of a zero output: e = 0 again; nonzero Grams with a zero target below.
            assertEquals(0, ps.fidelity(g, nonzero, new int[0]).exact());
            ModuleFidelity f = ps.fidelity(ps.grams("z", other), Coefficients.stack(new int[] {2, 3},
                    new double[] {1, 1}, new double[] {1, 1}), new int[0]);
            assertEquals(0, f.exact());
            assertEquals(Double.POSITIVE_INFINITY, ModuleFidelity.relative(1e-30, 0));
        }
    }

    @Test
    void tiesLeaveTheErrorUnique() {
        // Two orthogonal rank-1 clients of equal size: sigma_1 = sigma_2; any rank-1 answer is optimal.
        int m = 8, n = 6;
        float[] a1 = new float[n], a2 = new float[n], b1 = new float[m], b2 = new float[m];
        a1[0] = 1;
        a2[1] = 1;
        b1[0] = 2;
        b2[3] = 2;
        List<ModuleFactors> clients = List.of(
                ModuleFactors.of("x", Matrix.of(a1, 1, n), Matrix.of(b1, m, 1), 1),
                ModuleFactors.of("y", Matrix.of(a2, 1, n), Matrix.of(b2, m, 1), 1));
        try (ProductSpace ps = space("vector")) {
            LowRank out = ps.svd("t", clients, 1, Split.FLEXLORA, 1.0, Fill.ORTH);
            ModuleFidelity f = ps.fidelity(ps.grams("t", clients), out.coefficients(), new int[0]);
            assertEquals(Math.sqrt(0.5), f.exact(), 1e-12);
            DMatrixRMaj exact = Dense64.exactAverage(clients);
            assertEquals(Math.sqrt(0.5), Dense64.error(exact, Dense64.product(out.b(), out.a(), m, 1, n, 1)), 1e-6);
        }
    }

    // ---- FlexLoRA redistribution and STACK --------------------------------------------------------

    @ParameterizedTest
    @MethodSource("kernels")
    void flexLoraTruncationEqualsDenseFlexLora(String kernels) {
        // FlexLoRA: U = [w_k s_k B_k] with s_k = 16 / r_k; client k gets B_k = U_:rk Sigma_:rk / s_k, A_k = V_:rk^T.
        int[] ranks = {2, 4, 8, 12};
        double[] scales = IntStream.of(ranks).mapToDouble(r -> 16.0 / r).toArray();
        List<ModuleFactors> clients = Dense64.clients(9, 48, 40, ranks, new double[] {1, 2, 3, 1}, scales);
        DMatrixRMaj exact = Dense64.exactAverage(clients);
        Dense64.Svd ref = Dense64.svd(exact);
        try (ProductSpace ps = space(kernels)) {
            LowRank global = ps.svd("f", clients, 12, Split.FLEXLORA, 1.0, Fill.ORTH);
            for (int k = 0; k < ranks.length; k++) {
                int r = ranks[k];
                float[][] mine = global.forClient(r, scales[k]);
                DMatrixRMaj received = Dense64.product(mine[1], mine[0], 48, r, 40, scales[k]);
                double err = Dense64.relative(received, ref.truncated(r), exact);
                assertTrue(err < 2e-6, "client rank " + r + ": " + err);
            }
        }
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void stackIsExact(String kernels) {
        int[] ranks = {3, 1, 5};
        double[] weights = {2, 5, 3};
        double[] scales = {16.0 / 3, 16.0, 16.0 / 5};
        List<ModuleFactors> clients = Dense64.clients(10, 20, 17, ranks, weights, scales);
        try (ProductSpace ps = space(kernels)) {
            ProductSpace.Stacked st = ps.stack("s", clients, 1.0);
            assertEquals(9, st.rank());
            int o = 0;
            for (int k = 0; k < 3; k++) {
                ModuleFactors c = clients.get(k);
                double factor = weights[k] / 10 * scales[k];
                for (int i = 0; i < ranks[k]; i++) {
                    for (int col = 0; col < 17; col++) {
                        float want = c.a().get(i, col);
                        float got = st.a()[(o + i) * 17 + col];
                        assertTrue(Math.abs(got - factor * want) <= Math.ulp((float) (factor * want)),
                                "A entry within 1 ulp of (p_k/P) s_k A_k");
                    }
                    for (int r = 0; r < 20; r++) {
                        assertEquals(c.b().get(r, i), st.b()[r * 9 + o + i], "B is a copy");
                    }
                }
                o += ranks[k];
            }
            DMatrixRMaj exact = Dense64.exactAverage(clients);
            assertTrue(Dense64.error(exact, Dense64.product(st.b(), st.a(), 20, 9, 17, 1)) < 1e-6);
            ModuleFidelity f = ps.fidelity(ps.grams("s", clients), st.coefficients(), new int[0]);
            assertEquals(0.0, f.exactErrorSquared(), "F1 gives exactly 0 for STACK");
        }
    }

    // ---- fidelity -------------------------------------------------------------------------------

    @ParameterizedTest
    @MethodSource("kernels")
    void fidelityMatchesDenseForEveryStrategy(String kernels) {
        int[] ranks = {5, 5, 5, 20, 9};
        double[] weights = {1, 1, 2, 1, 3};
        List<ModuleFactors> clients = Dense64.clients(11, 64, 50, ranks, weights, null);
        checkFidelity(kernels, clients, ranks, weights, 12);
    }

    @ParameterizedTest
    @MethodSource("kernels")
    void fidelityOfNearCancellingClients(String kernels) {
        // Client 1 = -client 0 + 1e-4 noise; client 2 a near-copy of client 0 (eta = 1e-3): the
        // exact average is tiny next to the clients, so a stacked-Gram formula would lose it.
        List<ModuleFactors> base = Dense64.clients(12, 40, 30, new int[] {6, 6, 6}, new double[] {1, 1, 1}, null);
        List<ModuleFactors> noise = Dense64.clients(13, 40, 30, new int[] {6, 6, 6}, new double[] {1, 1, 1}, null);
        List<ModuleFactors> clients = new ArrayList<>();
        clients.add(base.get(0));
        clients.add(perturbed(base.get(0), noise.get(1), -1, 1e-4, "cancel"));
        clients.add(perturbed(base.get(0), noise.get(2), 1, 1e-3, "near-copy"));
        checkFidelity(kernels, clients, new int[] {6, 6, 6}, new double[] {1, 1, 1}, 6);
    }

    /** sign * B of x + eta * B of noise, A of x: a client close to +-x. */
    private static ModuleFactors perturbed(ModuleFactors x, ModuleFactors noise, int sign, double eta, String id) {
        int m = x.b().rows(), r = x.rank();
        float[] b = new float[m * r];
        for (int row = 0; row < m; row++) {
            for (int i = 0; i < r; i++) {
                b[row * r + i] = (float) (sign * x.b().get(row, i) + eta * noise.b().get(row, i));
            }
        }
        return ModuleFactors.of(id, x.a(), Matrix.of(b, m, r), x.weight());
    }

    private static void checkFidelity(String kernels, List<ModuleFactors> clients, int[] ranks, double[] weights,
            int rank) {
        DMatrixRMaj exact = Dense64.exactAverage(clients), rankAware = Dense64.rankAwareAverage(clients);
        double[] ones = Dense64.ones(ranks.length);
        double[] norms = clients.stream().mapToDouble(Dense64::updateNorm).toArray();
        int[] truncations = {1, 5, 9};
        try (ProductSpace ps = space(kernels)) {
            Grams g = ps.grams("f", clients);
            for (int k = 0; k < clients.size(); k++) {
                assertEquals(norms[k], g.updateNorm(k), 1e-12 * norms[k], "NORM weight from the Gram blocks");
            }
            List<Object[]> cases = new ArrayList<>();
            for (int kind = 0; kind < 3; kind++) {
                double[] v = kind == 2 ? norms : weights;
                Coefficients c = Coefficients.factorAverage(ranks, v, ones, rank, kind == 1);
                List<DMatrixRMaj> dense = new ArrayList<>();
                dense.add(Dense64.factorAverage(clients, v, rank, kind == 1));
                for (int r : truncations) {
                    dense.add(Dense64.factorAverage(clients, v, Math.min(r, rank), kind == 1));
                }
                cases.add(new Object[] {new String[] {"ZERO", "REPLICATION", "NORM"}[kind], c, dense});
            }
            LowRank svd = ps.svd(g, clients, rank, Split.FLEXLORA, 1.0, Fill.ORTH);
            List<DMatrixRMaj> svdDense = new ArrayList<>();
            // The SVD's coefficient form is exact arithmetic: compare with the dense optimum T_R.
            Dense64.Svd ref = Dense64.svd(exact);
            svdDense.add(ref.truncated(rank));
            for (int r : truncations) {
                svdDense.add(ref.truncated(Math.min(r, rank)));
            }
            cases.add(new Object[] {"SVD", svd.coefficients(), svdDense});
            for (Object[] c : cases) {
                String name = (String) c[0];
                @SuppressWarnings("unchecked")
                List<DMatrixRMaj> dense = (List<DMatrixRMaj>) c[2];
                ModuleFidelity f = ps.fidelity(g, (Coefficients) c[1], truncations);
                double tolRel = "SVD".equals(name) ? 1e-7 : 1e-8;
                assertClose(Dense64.error(exact, dense.get(0)), f.exact(), tolRel, name + " vs dW*");
                assertClose(Dense64.error(rankAware, dense.get(0)), f.rankAware(), tolRel, name + " vs dW_ra");
                for (int i = 0; i < truncations.length; i++) {
                    assertClose(Dense64.error(exact, dense.get(i + 1)), f.exactAt(i), tolRel,
                            name + " truncated to " + truncations[i]);
                    assertClose(Dense64.error(rankAware, dense.get(i + 1)), f.rankAwareAt(i), tolRel,
                            name + " truncated to " + truncations[i] + " vs dW_ra");
                }
            }
        }
    }

    /** |e' - e| <= tol e + 1e-13 (PRODUCT_SPACE.md §8, F1 with float64 Grams). */
    private static void assertClose(double want, double got, double tol, String what) {
        assertTrue(Math.abs(got - want) <= tol * want + 1e-13, what + ": dense " + want + ", Gram " + got);
    }

    // ---- kernels and input errors ---------------------------------------------------------------

    @Test
    void vectorKernelsMatchScalar() {
        java.util.Random rnd = new java.util.Random(14);
        GramKernels scalar = new ScalarGram(), vector = new VectorGram();
        // s = 1, primes, one below/above multiples of 8 and 24 (the 4 x 3-vector tile on AVX-512):
        // every tail of syrkUpper and gemm; rows 1..7 cover the 4-row blocks' tails in gemm; s above
        // 96 (the syrk's column block on AVX-512) cover several column sweeps with a ragged last one.
        for (int s : new int[] {1, 2, 3, 5, 7, 8, 13, 23, 24, 25, 31, 47, 49, 97, 193, 226}) {
            // rows 65 and 130: the syrk sweeps panels in chunks of 64 rows, with a ragged last one.
            for (int rows : new int[] {1, 3, 4, 7, 33, 65, 130}) {
                double[] x = new double[rows * s];
                for (int i = 0; i < x.length; i++) {
                    x[i] = (float) rnd.nextGaussian();
                }
                double[] g1 = new double[s * s], g2 = new double[s * s];
                scalar.syrkUpper(g1, x, rows, s);
                vector.syrkUpper(g2, x, rows, s);
                for (int p = 0; p < s; p++) {
                    for (int q = p; q < s; q++) {
                        assertEquals(g1[p * s + q], g2[p * s + q], 1e-12 * (1 + Math.abs(g1[p * s + q])), "syrk s=" + s);
                    }
                }
                for (int t : new int[] {1, 5, 8, 24, 29}) {
                    double[] coef = new double[s * t];
                    for (int i = 0; i < coef.length; i++) {
                        coef[i] = rnd.nextGaussian();
                    }
                    double[] o1 = new double[rows * t], o2 = new double[rows * t];
                    scalar.gemm(o1, x, rows, s, coef, t);
                    vector.gemm(o2, x, rows, s, coef, t);
                    assertArrayEquals(o1, o2, 1e-10 * s, "gemm s=" + s + " rows=" + rows + " t=" + t);
                }
            }
        }
    }

    @Test
    void gramsAreFloat64Accumulated() {
        // 1 + 2^-12 squared = 1 + 2^-11 + 2^-24: the last term is lost by a float32 sum of float32 products.
        float x = 1 + 0x1p-12f;
        int rows = 3;
        float[] b = new float[rows];
        java.util.Arrays.fill(b, x);
        List<ModuleFactors> one = List.of(ModuleFactors.of("c", Matrix.of(new float[] {1}, 1, 1), Matrix.of(b, rows, 1), 1));
        for (String k : new String[] {"scalar", "vector"}) {
            try (ProductSpace ps = space(k)) {
                assertEquals(3 * ((double) x * x), ps.grams("g", one).gramB()[0], 0.0, k);
            }
        }
    }

    @Test
    void badInputNamesTheModuleAndClient() {
        List<ModuleFactors> clients = new ArrayList<>(Dense64.clients(15, 10, 8, new int[] {2, 3}, new double[] {1, 1}, null));
        clients.set(1, new ModuleFactors("client-1", clients.get(1).a(), clients.get(1).b(), -1, 1));
        try (ProductSpace ps = space("scalar")) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> ps.svd("layers.0.q_proj", clients, 2, Split.FLEXLORA, 1, Fill.ORTH));
            assertTrue(e.getMessage().contains("layers.0.q_proj") && e.getMessage().contains("client-1")
                    && e.getMessage().contains("-1"), e.getMessage());
            List<ModuleFactors> shapes = Dense64.clients(16, 10, 8, new int[] {2}, new double[] {1}, null);
            shapes = new ArrayList<>(shapes);
            shapes.addAll(Dense64.clients(17, 10, 9, new int[] {2}, new double[] {1}, null));
            List<ModuleFactors> bad = shapes;
            e = assertThrows(IllegalArgumentException.class, () -> ps.grams("m", bad));
            assertTrue(e.getMessage().contains("[10 x 9]") && e.getMessage().contains("[10 x 8]"), e.getMessage());
            // A NaN in a factor (ProductSpace does not screen values): an error, not a silent rank-0 output.
            List<ModuleFactors> nan = new ArrayList<>(Dense64.clients(19, 10, 8, new int[] {2, 3}, new double[] {1, 1}, null));
            float[] poisoned = new float[3 * 8];
            poisoned[5] = Float.NaN;
            nan.set(1, ModuleFactors.of("client-1", Matrix.of(poisoned, 3, 8), nan.get(1).b(), 1));
            e = assertThrows(IllegalArgumentException.class, () -> ps.svd("layers.0.v_proj", nan, 2, Split.FLEXLORA, 1, Fill.ORTH));
            assertTrue(e.getMessage().startsWith("module layers.0.v_proj: the Gram matrix G_A = As As^T holds NaN"), e.getMessage());
            List<ModuleFactors> zero = Dense64.clients(18, 10, 8, new int[] {2}, new double[] {0}, null);
            e = assertThrows(IllegalArgumentException.class, () -> ps.grams("m", zero));
            assertTrue(e.getMessage().contains("sum to 0"), e.getMessage());
        }
    }
}
