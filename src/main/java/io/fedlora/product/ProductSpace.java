package io.fedlora.product;

import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.Matrix;
import java.lang.reflect.InvocationTargetException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ForkJoinPool;
import java.util.function.IntConsumer;
import java.util.stream.IntStream;
import org.ejml.data.DMatrixRMaj;
import org.ejml.dense.row.CommonOps_DDRM;
import org.ejml.dense.row.CommonOps_MT_DDRM;
import org.ejml.dense.row.NormOps_DDRM;
import org.ejml.dense.row.factory.DecompositionFactory_DDRM;
import org.ejml.dense.row.factory.DecompositionFactory_MT_DDRM;
import org.ejml.interfaces.decomposition.EigenDecomposition_F64;
import org.ejml.interfaces.decomposition.QRDecomposition;
import org.ejml.interfaces.decomposition.SingularValueDecomposition_F64;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Product-space aggregation of one module at a time (DESIGN §9, PRODUCT_SPACE.md §2): the best
 * rank-R factorisation of the exact weighted average {@code dW* = sum_k w_k s_k B_k A_k} (Gram
 * route, QR route where {@code S > min(m, n)}), FLoRA stacking, and the fidelity of any output that
 * is a known combination of the client factors, all without forming an {@code m x n} matrix.
 *
 * <p>The large work (Gram matrices, the output products) streams the clients' factors in panels of
 * rows (B) or columns (A) through {@link GramKernels}, in float64, split across threads by row
 * ranges (on the CUDA backend: cuBLAS, one part, each sum kept on the device); the small
 * {@code S x S} problems run on the host in float64 with EJML on every backend (about
 * {@code 46 S^3} flop: 5 GFLOP at S = 480, beside the 9-12 GFLOP of Grams and products at
 * 11008 x 4096; cuSOLVER, a second lazily loaded library and dependency, would pay off where
 * they dominate, K = 100 with S ~ 3000, and is not used yet). The clients' factors are read in
 * place; only a panel of {@code rows x S} doubles per thread is copied.
 *
 * <p>Thread-safe: calls share nothing but the thread pool.
 */
public final class ProductSpace implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProductSpace.class);

    /** Unit round-off of float64. */
    private static final double U64 = Math.ulp(1.0) / 2;
    /** Per-thread Gram partials are capped at this many bytes in all (S = 3000: 72 MB each). */
    private static final long PARTIAL_BYTES = 256L << 20;
    /** Square problems at least this big use EJML's multi-threaded decompositions and products. */
    private static final int CONCURRENT_MIN = 192;
    static final String VECTOR_CLASS = "io.fedlora.product.VectorGram";
    static final String CUDA_CLASS = "io.fedlora.kernels.cuda.CudaGram";

    private final GramKernels kernels;
    private final int threads;
    private volatile ForkJoinPool pool;

    public ProductSpace(GramKernels kernels, int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be >= 1, got " + threads);
        }
        this.kernels = kernels;
        this.threads = threads;
    }

    /** {@link #gramKernelsFor(Kernels, boolean)} for a backend that was asked for. */
    public static GramKernels gramKernelsFor(Kernels backend) {
        return gramKernelsFor(backend, true);
    }

    /**
     * The Gram kernels to pair with a kernels backend: the CUDA ones (cuBLAS, float64, on that
     * backend's device; {@value #CUDA_CLASS}, loaded by name so that this package does not depend
     * on the CUDA backend) for "cuda", else {@link #gramKernelsFor(String)}.
     *
     * <p>Where cuBLAS ({@code libcublas.so.12}) cannot load, what happens follows how the backend
     * was chosen, as in {@code Backends}: a CUDA backend that was asked for ({@code requested}: by
     * name or instance) keeps the CUDA kernels, and the first Gram matrix throws an
     * UnsupportedOperationException saying what is missing (a forced backend that quietly computed
     * on the CPU would hide a broken installation); one that {@code auto} chose gets the host
     * kernels, with one warning saying why, so that SVD and fidelity keep working on a driver-only
     * host. Checking loads cuBLAS, so this runs when the first product-space operation does.
     */
    public static GramKernels gramKernelsFor(Kernels backend, boolean requested) {
        if (!"cuda".equals(backend.name())) {
            return gramKernelsFor(backend.name());
        }
        try {
            return (GramKernels) Class.forName(CUDA_CLASS).getMethod("forBackend", Kernels.class, boolean.class)
                    .invoke(null, backend, requested);
        } catch (InvocationTargetException e) {
            if (e.getCause() instanceof RuntimeException r) {
                throw r;
            }
            throw new IllegalStateException("CUDA Gram kernels cannot run: " + e.getCause(), e.getCause());
        } catch (ReflectiveOperationException | LinkageError e) {
            throw new IllegalStateException("CUDA Gram kernels cannot run: " + e, e);
        }
    }

    /**
     * The host Gram kernels for a backend name: the reference loops for "scalar", the Vector API
     * ones otherwise (for "cuda" too: the device ones need the backend's instance,
     * {@link #gramKernelsFor(Kernels)}), falling back to the reference loops with one log line
     * when the incubator module is missing.
     */
    public static GramKernels gramKernelsFor(String backendName) {
        if ("scalar".equals(backendName)) {
            return new ScalarGram();
        }
        try {
            return (GramKernels) Class.forName(VECTOR_CLASS).getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException | LinkageError | UnsupportedOperationException e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            if ("vector".equals(backendName)) {
                throw new IllegalStateException("vector Gram kernels cannot run: " + cause, cause);
            }
            LOG.info("product space: scalar Gram kernels ({}); run with --add-modules jdk.incubator.vector", cause.toString());
            return new ScalarGram();
        }
    }

    public GramKernels kernels() {
        return kernels;
    }

    // ---- validation ---------------------------------------------------------------------------

    private static void check(String module, List<ModuleFactors> clients) {
        if (clients.isEmpty()) {
            throw new IllegalArgumentException("module " + module + ": no clients");
        }
        ModuleFactors first = clients.get(0);
        int m = first.b().rows(), n = first.a().cols();
        double total = 0;
        for (ModuleFactors c : clients) {
            String who = "module " + module + ", client " + c.clientId() + ": ";
            if (c.a().rows() < 1 || c.b().cols() != c.a().rows()) {
                throw new IllegalArgumentException(who + "lora_B has " + c.b().cols() + " columns, lora_A "
                        + c.a().rows() + " rows (ranks must agree and be >= 1)");
            }
            if (c.a().cols() != n || c.b().rows() != m) {
                throw new IllegalArgumentException(who + "shape [" + c.b().rows() + " x " + c.a().cols()
                        + "] differs from client " + first.clientId() + "'s [" + m + " x " + n + "]");
            }
            if (!(c.weight() >= 0) || Double.isInfinite(c.weight())) {
                throw new IllegalArgumentException(who + "weight " + c.weight() + " is not finite and >= 0");
            }
            if (!Double.isFinite(c.scale())) {
                throw new IllegalArgumentException(who + "LoRA scale " + c.scale() + " is not finite");
            }
            total += c.weight();
        }
        if (!(total > 0)) {
            throw new IllegalArgumentException("module " + module + ": the clients' weights sum to " + total
                    + "; at least one must be > 0");
        }
    }

    // ---- Gram matrices ------------------------------------------------------------------------

    /** {@code G_B = Bs^T Bs} and {@code G_A = As As^T} in float64: {@code (m + n) S^2} multiply-adds. */
    public Grams grams(String module, List<ModuleFactors> clients) {
        check(module, clients);
        int k = clients.size();
        int[] ranks = new int[k];
        double[] raw = new double[k], scales = new double[k], weights = new double[k];
        double total = 0;
        for (int c = 0; c < k; c++) {
            ranks[c] = clients.get(c).rank();
            raw[c] = clients.get(c).weight();
            scales[c] = clients.get(c).scale();
            total += raw[c];
        }
        for (int c = 0; c < k; c++) {
            weights[c] = raw[c] / total;
        }
        int[] offsets = Coefficients.offsets(ranks);
        int s = offsets[k];
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        double[] gramB = gram(s, m, (x, r0, rows) -> packB(x, clients, offsets, s, r0, rows, null));
        double[] gramA = gram(s, n, (x, c0, cols) -> packA(x, clients, offsets, s, c0, cols));
        requireFinite(module, "G_B = Bs^T Bs", gramB);
        requireFinite(module, "G_A = As As^T", gramA);
        return new Grams(module, m, n, ranks, offsets, weights, scales, raw, gramB, gramA);
    }

    /**
     * Finite float32 factors give finite Gram matrices (a product is at most 1.2e77, far from
     * float64's 1.8e308), so a NaN or infinity here is a factor holding one, which this class does
     * not screen (the facade does, before), or a faulty kernel. Either way an error: the
     * eigen/SVD steps would otherwise turn it into a silent rank-0 output. {@code S^2} reads.
     */
    private static void requireFinite(String module, String which, double[] gram) {
        for (double v : gram) {
            if (!Double.isFinite(v)) {
                throw new IllegalArgumentException("module " + module + ": the Gram matrix " + which + " holds " + v
                        + ": a client's factors hold NaN or infinity (screen them first), or the Gram kernels failed");
            }
        }
    }

    @FunctionalInterface
    private interface Packer {
        /** Fills {@code x} with {@code count} panel rows of S doubles, starting at stack row/column {@code first}. */
        void pack(double[] x, int first, int count);
    }

    /**
     * Rows per panel: 256, so that each result tile of the Gram kernel is read and written once per
     * 256 rows (with few rows per panel, at S in the thousands the S x S result's memory traffic
     * bounded the kernel); the kernels keep their working set in cache by sweeping column blocks.
     */
    private static int panelRows(int s) {
        return 256;
    }

    private double[] gram(int s, int length, Packer packer) {
        long bytes = 8L * s * s;
        int panel = panelRows(s);
        int parts = (int) Math.max(1, Math.min(Math.min(Math.min(threads, kernels.maxParts()),
                PARTIAL_BYTES / Math.max(1, bytes)), (length + panel - 1) / panel));
        double[][] partial = new double[parts][];
        forEach(parts, part -> {
            int from = (int) ((long) length * part / parts), to = (int) ((long) length * (part + 1) / parts);
            double[] x = new double[panel * s];
            try (GramKernels.GramSum sum = kernels.openGram(s)) {
                for (int r0 = from; r0 < to; r0 += panel) {
                    int rows = Math.min(panel, to - r0);
                    packer.pack(x, r0, rows);
                    sum.add(x, rows);
                }
                partial[part] = sum.upper();
            }
        });
        double[] g = partial[0];
        for (int part = 1; part < parts; part++) {
            double[] other = partial[part];
            for (int i = 0; i < g.length; i++) {
                g[i] += other[i];
            }
        }
        for (int p = 0; p < s; p++) {
            for (int q = p + 1; q < s; q++) {
                g[q * s + p] = g[p * s + q];
            }
        }
        return g;
    }

    /** {@code out (length x t) = panels(stack) * coef (S x t)}, row ranges across threads. */
    private double[] product(int s, int length, Packer packer, double[] coef, int t) {
        if (t == 0) {
            return new double[0];
        }
        int panel = panelRows(s);
        int parts = Math.max(1, Math.min(Math.min(threads, kernels.maxParts()), (length + panel - 1) / panel));
        try (GramKernels.PanelProduct out = kernels.openProduct(length, s, coef, t)) {
            forEach(parts, part -> {
                int from = (int) ((long) length * part / parts), to = (int) ((long) length * (part + 1) / parts);
                double[] x = new double[panel * s];
                for (int r0 = from; r0 < to; r0 += panel) {
                    int rows = Math.min(panel, to - r0);
                    packer.pack(x, r0, rows);
                    out.add(x, r0, rows);
                }
            });
            return out.result();
        }
    }

    /** Rows {@code r0 .. r0 + rows} of {@code Bs} (times {@code colScale} per stack column when not null). */
    private static void packB(double[] x, List<ModuleFactors> clients, int[] offsets, int s, int r0, int rows,
            double[] colScale) {
        for (int c = 0; c < clients.size(); c++) {
            Matrix b = clients.get(c).b();
            int o = offsets[c], r = b.cols();
            for (int row = 0; row < rows; row++) {
                int at = row * s + o;
                for (int i = 0; i < r; i++) {
                    double v = b.get(r0 + row, i);
                    x[at + i] = colScale == null ? v : v * colScale[o + i];
                }
            }
        }
    }

    /** Columns {@code c0 .. c0 + cols} of {@code As}, one panel row per column. */
    private static void packA(double[] x, List<ModuleFactors> clients, int[] offsets, int s, int c0, int cols) {
        for (int c = 0; c < clients.size(); c++) {
            Matrix a = clients.get(c).a();
            int o = offsets[c];
            for (int i = 0; i < a.rows(); i++) {
                for (int col = 0; col < cols; col++) {
                    x[col * s + o + i] = a.get(i, c0 + col);
                }
            }
        }
    }

    private void forEach(int parts, IntConsumer body) {
        if (parts == 1) {
            body.accept(0);
            return;
        }
        pool().submit(() -> IntStream.range(0, parts).parallel().forEach(body)).join();
    }

    private ForkJoinPool pool() {
        ForkJoinPool p = pool;
        if (p == null) {
            synchronized (this) {
                if (pool == null) {
                    pool = new ForkJoinPool(threads);
                }
                p = pool;
            }
        }
        return p;
    }

    @Override
    public void close() {
        ForkJoinPool p = pool;
        if (p != null) {
            p.shutdown();
        }
    }

    // ---- SVD ----------------------------------------------------------------------------------

    /** {@link #svd(Grams, List, int, Split, double, Fill)} with the Gram matrices computed here. */
    public LowRank svd(String module, List<ModuleFactors> clients, int rank, Split split, double outScale, Fill fill) {
        check(module, clients);
        int s = 0;
        for (ModuleFactors c : clients) {
            s += c.rank();
        }
        int m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        if (s > Math.min(m, n)) {
            return qrRoute(module, clients, rank, split, outScale, fill);
        }
        return svd(grams(module, clients), clients, rank, split, outScale, fill);
    }

    /**
     * The best rank-{@code rank} approximation of {@code dW*} as LoRA factors, {@code outScale * B A}
     * (DESIGN §9): the Gram route when {@code S <= min(m, n)}, else the QR route; the choice is logged
     * at debug level. Components beyond the numerical rank get zero B columns and {@code fill} A rows.
     *
     * @param grams this module's Gram matrices of exactly these clients
     */
    public LowRank svd(Grams grams, List<ModuleFactors> clients, int rank, Split split, double outScale, Fill fill) {
        if (rank < 1) {
            throw new IllegalArgumentException("module " + grams.module() + ": rank must be >= 1, got " + rank);
        }
        if (!(outScale > 0) || Double.isInfinite(outScale)) {
            throw new IllegalArgumentException("module " + grams.module() + ": output scale " + outScale
                    + " must be finite and > 0");
        }
        int s = grams.stackRank(), m = grams.m(), n = grams.n();
        if (s > Math.min(m, n)) {
            return qrRoute(grams.module(), clients, rank, split, outScale, fill);
        }
        LOG.debug("module {}: SVD by the Gram route (S = {}, {} x {}, rank {})", grams.module(), s, m, n, rank);
        double[] colScale = columnScale(grams);
        boolean big = s >= CONCURRENT_MIN && threads > 1;
        // G_U = diag(c) G_B diag(c); square roots G_U = F_U F_U^T, G_A = F_V F_V^T (R = F^T).
        DMatrixRMaj gu = new DMatrixRMaj(s, s);
        for (int p = 0; p < s; p++) {
            for (int q = 0; q < s; q++) {
                gu.data[p * s + q] = colScale[p] * grams.gramB()[p * s + q] * colScale[q];
            }
        }
        Root ru = squareRoot(grams.module(), gu, big);
        Root rv = squareRoot(grams.module(), DMatrixRMaj.wrap(s, s, grams.gramA().clone()), big);
        // Core C = F_U^T F_V = R_U R_V^T.
        DMatrixRMaj core = new DMatrixRMaj(ru.factor.numCols, rv.factor.numCols);
        if (big) {
            CommonOps_MT_DDRM.multTransA(ru.factor, rv.factor, core);
        } else {
            CommonOps_DDRM.multTransA(ru.factor, rv.factor, core);
        }
        Svd svd = svd(grams.module(), core, big);
        double tau = Math.sqrt(U64) * ru.norm * rv.norm;
        int t = kept(svd.sigma, tau, rank);
        // T_U = F_V Z_t diag(1/sigma), T_V = F_U W_t diag(1/sigma): only kept singular values are
        // inverted, never a Gram eigenvalue or pivot.
        DMatrixRMaj zt = new DMatrixRMaj(rv.factor.numCols, t), wt = new DMatrixRMaj(ru.factor.numCols, t);
        for (int q = 0; q < zt.numRows; q++) {
            for (int i = 0; i < t; i++) {
                zt.data[q * t + i] = svd.right.get(q, i) / svd.sigma[i];
            }
        }
        for (int q = 0; q < wt.numRows; q++) {
            for (int i = 0; i < t; i++) {
                wt.data[q * t + i] = svd.left.get(q, i) / svd.sigma[i];
            }
        }
        DMatrixRMaj tu = new DMatrixRMaj(s, t), tv = new DMatrixRMaj(s, t);
        CommonOps_DDRM.mult(rv.factor, zt, tu);
        CommonOps_DDRM.mult(ru.factor, wt, tv);
        double[] coefB = new double[s * t];
        for (int p = 0; p < s; p++) {
            for (int i = 0; i < t; i++) {
                coefB[p * t + i] = colScale[p] * tu.data[p * t + i];
            }
        }
        double[] ucols = product(s, m, (x, r0, rows) -> packB(x, clients, grams.offsets(), s, r0, rows, null), coefB, t);
        boolean[] flip = signRule(ucols, m, t);
        for (int p = 0; p < s; p++) {
            for (int i = 0; i < t; i++) {
                if (flip[i]) {
                    coefB[p * t + i] = -coefB[p * t + i];
                    tv.data[p * t + i] = -tv.data[p * t + i];
                }
            }
        }
        for (int r = 0; r < m; r++) {
            for (int i = 0; i < t; i++) {
                if (flip[i]) {
                    ucols[r * t + i] = -ucols[r * t + i];
                }
            }
        }
        double[] vcols = product(s, n, (x, c0, cols) -> packA(x, clients, grams.offsets(), s, c0, cols), tv.data, t);
        double[] sigma = Arrays.copyOf(svd.sigma, t);
        double[] left = new double[s * t];
        for (int p = 0; p < s; p++) {
            for (int i = 0; i < t; i++) {
                left[p * t + i] = coefB[p * t + i] * sigma[i];
            }
        }
        return factors(grams.module(), m, n, rank, ucols, vcols, sigma, svd.normSquared, split, outScale, fill,
                Route.GRAM, Coefficients.dense(s, t, left, tv.data));
    }

    /**
     * The QR route (PRODUCT_SPACE.md S1): writable float64 copies of both stacks, {@code (m + n) S}
     * doubles. Package-private so that the tests can hold it against the Gram route on one problem.
     */
    LowRank qrRoute(String module, List<ModuleFactors> clients, int rank, Split split, double outScale,
            Fill fill) {
        check(module, clients);
        int k = clients.size();
        int[] ranks = new int[k];
        double total = 0;
        for (int c = 0; c < k; c++) {
            ranks[c] = clients.get(c).rank();
            total += clients.get(c).weight();
        }
        int[] offsets = Coefficients.offsets(ranks);
        int s = offsets[k], m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        LOG.info("module {}: SVD by the QR route, S = {} > min({}, {})", module, s, m, n);
        double[] colScale = new double[s];
        for (int c = 0; c < k; c++) {
            double w = clients.get(c).weight() / total * clients.get(c).scale();
            Arrays.fill(colScale, offsets[c], offsets[c + 1], w);
        }
        DMatrixRMaj u = new DMatrixRMaj(m, s), vt = new DMatrixRMaj(n, s);
        packB(u.data, clients, offsets, s, 0, m, colScale);
        packA(vt.data, clients, offsets, s, 0, n);
        int s1 = Math.min(m, s), s2 = Math.min(n, s);
        QRDecomposition<DMatrixRMaj> qu = DecompositionFactory_DDRM.qr(m, s);
        QRDecomposition<DMatrixRMaj> qv = DecompositionFactory_DDRM.qr(n, s);
        if (!qu.decompose(u.copy()) || !qv.decompose(vt.copy())) {
            throw new ArithmeticException("module " + module + ": QR decomposition failed");
        }
        DMatrixRMaj q1 = qu.getQ(null, true), r1 = qu.getR(null, true);
        DMatrixRMaj q2 = qv.getQ(null, true), r2 = qv.getR(null, true);
        DMatrixRMaj core = new DMatrixRMaj(s1, s2);
        CommonOps_DDRM.multTransB(r1, r2, core);
        boolean big = Math.max(s1, s2) >= CONCURRENT_MIN && threads > 1;
        Svd svd = svd(module, core, big);
        double tau = 8 * U64 * NormOps_DDRM.normF(r1) * NormOps_DDRM.normF(r2);
        int t = kept(svd.sigma, tau, rank);
        DMatrixRMaj wt = CommonOps_DDRM.extract(svd.left, 0, s1, 0, t);
        DMatrixRMaj zt = CommonOps_DDRM.extract(svd.right, 0, s2, 0, t);
        DMatrixRMaj uc = new DMatrixRMaj(m, t), vc = new DMatrixRMaj(n, t);
        CommonOps_DDRM.mult(q1, wt, uc);
        CommonOps_DDRM.mult(q2, zt, vc);
        boolean[] flip = signRule(uc.data, m, t);
        flipColumns(uc, flip);
        flipColumns(vc, flip);
        // Coefficients: u_i = U V v_i / sigma_i and v_i = V^T U^T u_i / sigma_i, so
        // L = diag(c) As Vcols (sigma folded in) and R = U^T Ucols diag(1/sigma).
        DMatrixRMaj left = new DMatrixRMaj(s, t), right = new DMatrixRMaj(s, t);
        CommonOps_DDRM.multTransA(vt, vc, left);
        CommonOps_DDRM.multTransA(u, uc, right);
        double[] sigma = Arrays.copyOf(svd.sigma, t);
        for (int p = 0; p < s; p++) {
            for (int i = 0; i < t; i++) {
                left.data[p * t + i] *= colScale[p];
                right.data[p * t + i] /= sigma[i];
            }
        }
        return factors(module, m, n, rank, uc.data, vc.data, sigma, svd.normSquared, split, outScale, fill, Route.QR,
                Coefficients.dense(s, t, left.data, right.data));
    }

    private static void flipColumns(DMatrixRMaj x, boolean[] flip) {
        for (int r = 0; r < x.numRows; r++) {
            for (int i = 0; i < x.numCols; i++) {
                if (flip[i]) {
                    x.data[r * x.numCols + i] = -x.data[r * x.numCols + i];
                }
            }
        }
    }

    /** {@code w_k s_k} for every stack column of client k. */
    private static double[] columnScale(Grams g) {
        double[] c = new double[g.stackRank()];
        for (int k = 0; k < g.clients(); k++) {
            Arrays.fill(c, g.offsets()[k], g.offsets()[k + 1], g.weights()[k] * g.scales()[k]);
        }
        return c;
    }

    /** Number of singular values above the floor, at most {@code rank} (they are sorted descending). */
    private static int kept(double[] sigma, double tau, int rank) {
        int t = 0;
        while (t < Math.min(rank, sigma.length) && sigma[t] > tau) {
            t++;
        }
        return t;
    }

    /**
     * The sign rule (determinism): flip column i so that its largest-magnitude entry is positive,
     * the first such entry on exact ties. The QR route, the Gram route and dense LAPACK then agree.
     */
    static boolean[] signRule(double[] cols, int rows, int t) {
        boolean[] flip = new boolean[t];
        for (int i = 0; i < t; i++) {
            double best = -1, at = 0;
            for (int r = 0; r < rows; r++) {
                double v = cols[r * t + i];
                if (Math.abs(v) > best) {
                    best = Math.abs(v);
                    at = v;
                }
            }
            flip[i] = at < 0;
        }
        return flip;
    }

    /** Ucols (m x t) and Vcols (n x t), sign-fixed, into float32 LoRA factors of rank {@code rank}. */
    private static LowRank factors(String module, int m, int n, int rank, double[] ucols, double[] vcols,
            double[] sigma, double normSquared, Split split, double outScale, Fill fill, Route route,
            Coefficients coefficients) {
        int t = sigma.length;
        float[] b = new float[Math.multiplyExact(m, rank)];
        float[] a = new float[Math.multiplyExact(rank, n)];
        double[] fb = new double[t], fa = new double[t];
        for (int i = 0; i < t; i++) {
            double size = sigma[i] / outScale;
            fb[i] = split == Split.FLEXLORA ? size : Math.sqrt(size);
            fa[i] = split == Split.FLEXLORA ? 1 : Math.sqrt(size);
        }
        for (int r = 0; r < m; r++) {
            for (int i = 0; i < t; i++) {
                b[r * rank + i] = (float) (ucols[r * t + i] * fb[i]);
            }
        }
        for (int i = 0; i < t; i++) {
            for (int c = 0; c < n; c++) {
                a[i * n + c] = (float) (vcols[c * t + i] * fa[i]);
            }
        }
        if (fill == Fill.ORTH && t < rank) {
            fillOrthonormal(a, rank, n, t, vcols);
        }
        return new LowRank(module, m, n, rank, a, b, outScale, sigma, t, route, normSquared, coefficients);
    }

    /**
     * A rows {@code t .. rank-1}: unit vectors e_0, e_1, ... made orthogonal (Gram-Schmidt, twice)
     * to the kept directions and to each other, skipping those nearly inside their span. Depends
     * only on the kept directions, so it is deterministic. Rows past n stay zero (no room left).
     */
    private static void fillOrthonormal(float[] a, int rank, int n, int t, double[] vcols) {
        List<double[]> basis = new ArrayList<>();
        for (int i = 0; i < t; i++) {
            double[] v = new double[n];
            for (int c = 0; c < n; c++) {
                v[c] = vcols[c * t + i];
            }
            basis.add(v);
        }
        int row = t;
        for (int j = 0; j < n && row < rank; j++) {
            double[] v = new double[n];
            v[j] = 1;
            for (int pass = 0; pass < 2; pass++) {
                for (double[] e : basis) {
                    double dot = 0;
                    for (int c = 0; c < n; c++) {
                        dot += e[c] * v[c];
                    }
                    for (int c = 0; c < n; c++) {
                        v[c] -= dot * e[c];
                    }
                }
            }
            double norm = 0;
            for (double x : v) {
                norm += x * x;
            }
            norm = Math.sqrt(norm);
            if (norm < 0.5) {
                continue;
            }
            for (int c = 0; c < n; c++) {
                v[c] /= norm;
                a[row * n + c] = (float) v[c];
            }
            basis.add(v);
            row++;
        }
    }

    /** A square root {@code F} ({@code S x rho}) of a Gram matrix, {@code G = F F^T}, and {@code ||F||_2}. */
    record Root(DMatrixRMaj factor, double norm) {
    }

    /**
     * System property: "eigen" takes square roots by symmetric eigendecomposition
     * ({@code F = E Lambda^1/2}, negative eigenvalues clamped), as PRODUCT_SPACE.md S2 states it;
     * the default, pivoted Cholesky, gives an equivalent root for 1/27 of the flops (LAPACK constants).
     */
    static final String ROOT_PROPERTY = "fedlora.product.root";

    static Root squareRoot(String module, DMatrixRMaj g, boolean big) {
        return "eigen".equals(System.getProperty(ROOT_PROPERTY)) ? eigenRoot(module, g, big) : choleskyRoot(g);
    }

    /**
     * Pivoted Cholesky (LAPACK dpstrf's rule): {@code G[order[a], order[b]] = sum_k L[a][k] L[b][k]};
     * at each step the largest remaining diagonal is the pivot, and the factorisation stops when it is
     * at most {@code S u max(diag G)}, so the root has the numerical rank of G as its width: duplicate,
     * zero or collinear clients give a narrower core, never a division by a tiny pivot. Left-looking,
     * so every step is contiguous dot products of rows of L: {@code S^3 / 3} flops.
     */
    static Root choleskyRoot(DMatrixRMaj g) {
        int s = g.numRows;
        int[] order = new int[s];
        double[] d = new double[s];
        double maxDiag = 0;
        for (int i = 0; i < s; i++) {
            order[i] = i;
            d[i] = g.data[i * s + i];
            maxDiag = Math.max(maxDiag, d[i]);
        }
        double tol = s * U64 * maxDiag;
        double[] l = new double[s * s];
        int rank = 0;
        for (int j = 0; j < s; j++) {
            int pivot = j;
            for (int t = j + 1; t < s; t++) {
                if (d[t] > d[pivot]) {
                    pivot = t;
                }
            }
            if (!(d[pivot] > tol)) {
                break;
            }
            if (pivot != j) {
                int o = order[j];
                order[j] = order[pivot];
                order[pivot] = o;
                double x = d[j];
                d[j] = d[pivot];
                d[pivot] = x;
                for (int k = 0; k < j; k++) {
                    double y = l[j * s + k];
                    l[j * s + k] = l[pivot * s + k];
                    l[pivot * s + k] = y;
                }
            }
            double ljj = Math.sqrt(d[j]);
            l[j * s + j] = ljj;
            int gj = order[j] * s;
            for (int t = j + 1; t < s; t++) {
                double sum = g.data[gj + order[t]];
                int lt = t * s, lj = j * s;
                for (int k = 0; k < j; k++) {
                    sum -= l[lt + k] * l[lj + k];
                }
                double v = sum / ljj;
                l[lt + j] = v;
                d[t] -= v * v;
            }
            rank++;
        }
        DMatrixRMaj f = new DMatrixRMaj(s, rank);
        for (int a = 0; a < s; a++) {
            System.arraycopy(l, a * s, f.data, order[a] * rank, rank);
        }
        return new Root(f, spectralNorm(f));
    }

    /** {@code ||F||_2} by power iteration on {@code F^T F} (30 steps from a fixed start): the floor needs no more. */
    private static double spectralNorm(DMatrixRMaj f) {
        int rows = f.numRows, cols = f.numCols;
        if (cols == 0) {
            return 0;
        }
        double[] x = new double[cols], y = new double[rows];
        for (int i = 0; i < cols; i++) {
            x[i] = 1 + 0.01 * i;
        }
        double lambda = 0;
        for (int it = 0; it < 30; it++) {
            double nx = 0;
            for (double v : x) {
                nx += v * v;
            }
            nx = Math.sqrt(nx);
            if (nx == 0) {
                return 0;
            }
            for (int i = 0; i < cols; i++) {
                x[i] /= nx;
            }
            for (int r = 0; r < rows; r++) {
                double sum = 0;
                for (int i = 0; i < cols; i++) {
                    sum += f.data[r * cols + i] * x[i];
                }
                y[r] = sum;
            }
            java.util.Arrays.fill(x, 0);
            double ny = 0;
            for (int r = 0; r < rows; r++) {
                ny += y[r] * y[r];
                for (int i = 0; i < cols; i++) {
                    x[i] += f.data[r * cols + i] * y[r];
                }
            }
            lambda = ny;
        }
        return Math.sqrt(lambda);
    }

    /** {@code F = E diag(sqrt(max(lambda, 0)))} from a symmetric eigendecomposition. */
    static Root eigenRoot(String module, DMatrixRMaj g, boolean big) {
        int s = g.numRows;
        EigenDecomposition_F64<DMatrixRMaj> eig = big ? DecompositionFactory_MT_DDRM.eig(s, true, true)
                : DecompositionFactory_DDRM.eig(s, true, true);
        if (!eig.decompose(g)) {
            throw new ArithmeticException("module " + module + ": symmetric eigendecomposition of a " + s + " x " + s
                    + " Gram matrix did not converge");
        }
        DMatrixRMaj f = new DMatrixRMaj(s, s);
        double max = 0;
        for (int i = 0; i < s; i++) {
            double root = Math.sqrt(Math.max(eig.getEigenvalue(i).real, 0));
            max = Math.max(max, root);
            DMatrixRMaj v = eig.getEigenVector(i);
            for (int p = 0; p < s; p++) {
                f.data[p * s + i] = v == null ? 0 : v.data[p] * root;
            }
        }
        return new Root(f, max);
    }

    /** Singular values descending, with their left and right vectors as columns. */
    private record Svd(double[] sigma, DMatrixRMaj left, DMatrixRMaj right, double normSquared) {
    }

    private static Svd svd(String module, DMatrixRMaj core, boolean big) {
        int rows = core.numRows, cols = core.numCols, k = Math.min(rows, cols);
        if (k == 0) {
            return new Svd(new double[0], new DMatrixRMaj(rows, 0), new DMatrixRMaj(cols, 0), 0);
        }
        SingularValueDecomposition_F64<DMatrixRMaj> svd = big ? DecompositionFactory_MT_DDRM.svd(rows, cols, true, true, true)
                : DecompositionFactory_DDRM.svd(rows, cols, true, true, true);
        if (!svd.decompose(core.copy())) {
            throw new ArithmeticException("module " + module + ": SVD of the " + rows + " x " + cols
                    + " core did not converge");
        }
        double[] values = svd.getSingularValues();
        DMatrixRMaj u = svd.getU(null, false), v = svd.getV(null, false);
        int count = svd.numberOfSingularValues();
        Integer[] order = new Integer[count];
        for (int i = 0; i < count; i++) {
            order[i] = i;
        }
        // Descending, ties in EJML's order (stable sort).
        Arrays.sort(order, (x, y) -> Double.compare(values[y], values[x]));
        double[] sigma = new double[count];
        DMatrixRMaj left = new DMatrixRMaj(rows, count), right = new DMatrixRMaj(cols, count);
        double normSquared = 0;
        for (int i = 0; i < count; i++) {
            int from = order[i];
            sigma[i] = values[from];
            normSquared += sigma[i] * sigma[i];
            for (int r = 0; r < rows; r++) {
                left.data[r * count + i] = u.get(r, from);
            }
            for (int r = 0; r < cols; r++) {
                right.data[r * count + i] = v.get(r, from);
            }
        }
        return new Svd(sigma, left, right, normSquared);
    }

    // ---- STACK --------------------------------------------------------------------------------

    /** FLoRA stacking's factors and coefficients. */
    public record Stacked(String module, int m, int n, int rank, float[] a, float[] b, Coefficients coefficients) {
    }

    /**
     * FLoRA stacking (PRODUCT_SPACE.md §2.6): {@code B = [B_1 ... B_K]} (copied), {@code A} the rows of
     * every {@code A_k} times {@code w_k s_k / outScale} (one rounding each), so
     * {@code outScale * B A = dW*} exactly at rank S. PEFT's {@code cat} convention is
     * {@code outScale = 1} ({@code lora_alpha = r}).
     */
    public Stacked stack(String module, List<ModuleFactors> clients, double outScale) {
        check(module, clients);
        int k = clients.size();
        int[] ranks = new int[k];
        double[] weights = new double[k], scales = new double[k];
        double total = 0;
        for (int c = 0; c < k; c++) {
            ranks[c] = clients.get(c).rank();
            weights[c] = clients.get(c).weight();
            scales[c] = clients.get(c).scale();
            total += weights[c];
        }
        int[] offsets = Coefficients.offsets(ranks);
        int s = offsets[k], m = clients.get(0).b().rows(), n = clients.get(0).a().cols();
        float[] a = new float[Math.multiplyExact(s, n)];
        float[] b = new float[Math.multiplyExact(m, s)];
        for (int c = 0; c < k; c++) {
            ModuleFactors f = clients.get(c);
            double factor = weights[c] / total * scales[c] / outScale;
            for (int i = 0; i < ranks[c]; i++) {
                for (int col = 0; col < n; col++) {
                    a[(offsets[c] + i) * n + col] = (float) (factor * f.a().get(i, col));
                }
            }
            for (int row = 0; row < m; row++) {
                for (int i = 0; i < ranks[c]; i++) {
                    b[row * s + offsets[c] + i] = f.b().get(row, i);
                }
            }
        }
        return new Stacked(module, m, n, s, a, b, Coefficients.stack(ranks, weights, scales));
    }

    // ---- fidelity -----------------------------------------------------------------------------

    /**
     * The coefficient split of DESIGN §9: with {@code D = diag(t) - L R^T} for a target {@code t}
     * (the exact or the rank-aware average), {@code ||Bs D As||_F^2 = tr(D^T G_B D G_A)}; the
     * cancellation happens in float64 products of the weights, so there is no {@code sqrt(u)}
     * floor. {@code X = D^T G_B} and {@code Y = G_A D^T} are built from {@code T G} by one rank-one
     * update per output component,
     * so every truncation rank in {@code ranks} costs one more {@code S^2} sum.
     * Cost {@code O(S^2 (rank + |ranks|))} for dense coefficients, less for sparse ones; memory {@code 2 S^2} doubles.
     *
     * @param ranks truncation ranks to report as well (e.g. the clients' ranks); may be empty
     */
    public ModuleFidelity fidelity(Grams grams, Coefficients output, int[] ranks) {
        if (output.stackRank() != grams.stackRank()) {
            throw new IllegalArgumentException("module " + grams.module() + ": coefficients for stack rank "
                    + output.stackRank() + ", Gram matrices of stack rank " + grams.stackRank());
        }
        double[] exactAt = new double[ranks.length], rankAwareAt = new double[ranks.length];
        double[] exact = errorSquared(grams, grams.exactTarget(), output, ranks, exactAt);
        double[] rankAware = errorSquared(grams, grams.rankAwareTarget(), output, ranks, rankAwareAt);
        return new ModuleFidelity(grams.module(), exact[0], exact[1], rankAware[0], rankAware[1], ranks.clone(),
                exactAt, rankAwareAt);
    }

    /**
     * {den, num at full rank}; num at each of {@code ranks} into {@code at}. Keeps {@code X = D^T G_B}
     * and {@code Y = (D G_A)^T = G_A D^T}, both row-major, so that {@code tr(X Y^T)} is one contiguous dot.
     */
    private static double[] errorSquared(Grams grams, double[] target, Coefficients out, int[] ranks, double[] at) {
        int s = grams.stackRank();
        double[] gb = grams.gramB(), ga = grams.gramA();
        double den = 0;
        double[] x = new double[s * s], y = new double[s * s];
        for (int p = 0; p < s; p++) {
            for (int q = 0; q < s; q++) {
                int i = p * s + q;
                x[i] = target[p] * gb[i];
                y[i] = ga[i] * target[q];
                den += target[p] * target[q] * gb[i] * ga[i];
            }
        }
        int rank = out.rank();
        double[] g = new double[s], h = new double[s];
        for (int r = 0; r < ranks.length; r++) {
            if (Math.min(ranks[r], rank) <= 0) {
                at[r] = dot(x, y);
            }
        }
        for (int i = 0; i < rank; i++) {
            int[] li = out.leftIndex(i), ri = out.rightIndex(i);
            double[] lv = out.leftValue(i), rv = out.rightValue(i);
            // g = L_i^T G_B; X -= R_i g^T.   h = G_A R_i; Y -= h L_i^T.
            Arrays.fill(g, 0);
            Arrays.fill(h, 0);
            for (int e = 0; e < li.length; e++) {
                axpy(g, lv[e], gb, li[e] * s, s);
            }
            for (int e = 0; e < ri.length; e++) {
                axpy(h, rv[e], ga, ri[e] * s, s);
            }
            for (int e = 0; e < ri.length; e++) {
                axpyInto(x, ri[e] * s, -rv[e], g, s);
            }
            if (li.length == s) {
                for (int p = 0; p < s; p++) {
                    axpyIntoScattered(y, p * s, -h[p], li, lv);
                }
            } else {
                for (int e = 0; e < li.length; e++) {
                    double l = -lv[e];
                    for (int p = 0, q = li[e]; p < s; p++, q += s) {
                        y[q] = Math.fma(h[p], l, y[q]);
                    }
                }
            }
            for (int r = 0; r < ranks.length; r++) {
                if (Math.min(ranks[r], rank) == i + 1) {
                    at[r] = dot(x, y);
                }
            }
        }
        return new double[] {den, dot(x, y)};
    }

    /** y[from + index[e]] += a * value[e]. */
    private static void axpyIntoScattered(double[] y, int from, double a, int[] index, double[] value) {
        if (a == 0) {
            return;
        }
        for (int e = 0; e < index.length; e++) {
            y[from + index[e]] = Math.fma(a, value[e], y[from + index[e]]);
        }
    }

    /** sum_i x[i] y[i] = tr(X Y^T). */
    private static double dot(double[] x, double[] y) {
        double sum = 0;
        for (int i = 0; i < x.length; i++) {
            sum = Math.fma(x[i], y[i], sum);
        }
        return sum;
    }

    /** y += a * x[from .. from + n]. */
    private static void axpy(double[] y, double a, double[] x, int from, int n) {
        if (a == 0) {
            return;
        }
        for (int q = 0; q < n; q++) {
            y[q] = Math.fma(a, x[from + q], y[q]);
        }
    }

    /** y[from .. from + n] += a * x. */
    private static void axpyInto(double[] y, int from, double a, double[] x, int n) {
        if (a == 0) {
            return;
        }
        for (int q = 0; q < n; q++) {
            y[from + q] = Math.fma(a, x[q], y[from + q]);
        }
    }
}
