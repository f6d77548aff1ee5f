package io.fedlora.kernels;

import io.fedlora.DType;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinWorkerThread;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.IntStream;

/**
 * What the CPU backends share: the cache tiling, the split of large work across cores, and the
 * loops over rows, all written once in terms of five row primitives that each backend supplies.
 * The split never changes the arithmetic (every output element is computed by one thread, in
 * source order), so results do not depend on the thread count.
 */
public abstract class CpuKernels implements Kernels {

    /** Elements per tile: 32 KiB of float32, so a tile of sums stays in L1 while all clients pass. */
    static final int TILE = 8192;
    /** Below this many elements an operation stays on the calling thread. */
    static final long PARALLEL_MIN = 1L << 17;

    private final int threads;
    private volatile ForkJoinPool pool;

    protected CpuKernels(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be >= 1, got " + threads);
        }
        this.threads = threads;
    }

    /** Threads a large operation is split across. */
    public final int threads() {
        return threads;
    }

    // ---- the row primitives a backend implements ------------------------------------------

    /** {@code acc[accOff + t] = fma(w, src[srcOff + t], acc[accOff + t])} for {@code t < n}; srcOff counts elements. */
    protected abstract void axpy(float[] acc, int accOff, MemorySegment src, DType dtype, long srcOff, int n, float w);

    /**
     * {@code out[outOff + t] = in[inOff + t] * (rowFactor * colScale[colOff + t])} (colScale null: just
     * rowFactor); returns true iff every result is finite.
     */
    protected abstract boolean scale(float[] out, int outOff, float[] in, int inOff, int n, float rowFactor,
            float[] colScale, int colOff);

    /** True iff {@code src[srcOff .. srcOff + n)} holds no NaN or infinity. */
    protected abstract boolean finite(MemorySegment src, DType dtype, long srcOff, int n);

    /** {@code out[outOff + t] = (float) src[srcOff + t]}: a conversion copy. */
    protected abstract void load(float[] out, int outOff, MemorySegment src, DType dtype, long srcOff, int n);

    /** {@code sum x[xOff + t] * y[yOff + t]}, for the Gram matrices. */
    protected abstract double dot(float[] x, int xOff, float[] y, int yOff, int n);

    // ---- Kernels -----------------------------------------------------------------------------

    @Override
    public Accumulator newAccumulator(int rows, int cols) {
        return new CpuAccumulator(rows, cols);
    }

    @Override
    public int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights,
            float[] rowScale, float[] colScale) {
        Tiling tiling = new Tiling(rows, cols);
        AtomicInteger firstBad = new AtomicInteger(Integer.MAX_VALUE);
        forEachTile(tiling, tile -> {
            int r0 = tiling.row0(tile), r1 = tiling.row1(tile), c0 = tiling.col0(tile), c1 = tiling.col1(tile);
            for (int i = r0; i < r1; i++) {
                Arrays.fill(out, i * cols + c0, i * cols + c1, 0f);
            }
            for (int k = 0; k < sources.length; k++) {
                addTile(out, cols, r0, r1, c0, c1, sources[k], weights[k]);
            }
            boolean ok = true;
            for (int i = r0; i < r1; i++) {
                float rowFactor = rowScale == null ? 1f : rowScale[i];
                ok &= scale(out, i * cols + c0, out, i * cols + c0, c1 - c0, rowFactor, colScale, c0);
            }
            if (!ok) {
                // A non-finite input always leaves a non-finite sum (fma with NaN or inf, even with
                // weight 0, gives NaN or inf), so only a bad tile is scanned again to name its source.
                firstBad.accumulateAndGet(badSource(sources, r0, r1, c0, c1), Math::min);
            }
        });
        int bad = firstBad.get();
        return bad == Integer.MAX_VALUE ? -1 : bad;
    }

    /** The first source with a non-finite value inside the tile, or sources.length (finite inputs that overflowed). */
    private int badSource(Matrix[] sources, int r0, int r1, int c0, int c1) {
        for (int k = 0; k < sources.length; k++) {
            Matrix src = sources[k];
            int ce = Math.min(c1, src.cols());
            for (int i = r0; i < Math.min(r1, src.rows()) && ce > c0; i++) {
                if (!finite(src.data(), src.dtype(), src.offset() + (long) i * src.rowStride() + c0, ce - c0)) {
                    return k;
                }
            }
        }
        return sources.length;
    }

    /** sums[r0..r1, c0..c1) += w * src over the part of the tile inside src; one run when both are contiguous. */
    private void addTile(float[] sums, int cols, int r0, int r1, int c0, int c1, Matrix src, float w) {
        int re = Math.min(r1, src.rows());
        int ce = Math.min(c1, src.cols());
        if (re <= r0 || ce <= c0) {
            return;
        }
        if (c0 == 0 && ce == cols && c1 == cols && src.rowStride() == cols) {
            axpy(sums, r0 * cols, src.data(), src.dtype(), src.offset() + (long) r0 * cols, (re - r0) * cols, w);
            return;
        }
        for (int i = r0; i < re; i++) {
            axpy(sums, i * cols + c0, src.data(), src.dtype(), src.offset() + (long) i * src.rowStride() + c0,
                    ce - c0, w);
        }
    }

    @Override
    public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) {
        forEachRowBlock(rows, cols, (r0, r1) -> {
            for (int i = r0; i < r1; i++) {
                int copied = 0;
                if (i < src.rows()) {
                    copied = Math.min(cols, src.cols());
                    load(out, i * cols, src.data(), src.dtype(), src.offset() + (long) i * src.rowStride(), copied);
                }
                if (donor != null) {
                    System.arraycopy(donor, i * cols + copied, out, i * cols + copied, cols - copied);
                } else {
                    Arrays.fill(out, i * cols + copied, (i + 1) * cols, 0f);
                }
            }
        });
    }

    @Override
    public boolean allFinite(Matrix src) {
        if (src.contiguous()) {
            return finite(src.data(), src.dtype(), src.offset(), Math.toIntExact(src.size()));
        }
        for (int i = 0; i < src.rows(); i++) {
            if (!finite(src.data(), src.dtype(), src.offset() + (long) i * src.rowStride(), src.cols())) {
                return false;
            }
        }
        return true;
    }

    @Override
    public double loraNormSquared(Matrix a, Matrix b) {
        int r = a.rows(), n = a.cols(), m = b.rows();
        float[] rowsOfA = new float[Math.multiplyExact(r, n)];
        pad(rowsOfA, r, n, a, null);
        // B's columns become rows so that both Gram matrices are dot products of contiguous runs.
        float[] colsOfB = new float[Math.multiplyExact(r, m)];
        float[] row = new float[r];
        for (int i = 0; i < m; i++) {
            load(row, 0, b.data(), b.dtype(), b.offset() + (long) i * b.rowStride(), r);
            for (int j = 0; j < r; j++) {
                colsOfB[j * m + i] = row[j];
            }
        }
        // ||BA||_F^2 = sum_ij (A A^T)_ij (B^T B)_ij; both Grams are symmetric, so sum i >= j twice.
        double[] perRow = new double[r];
        IntStream rowsOfGram = IntStream.range(0, r);
        Runnable body = () -> (((long) r * r * (n + m) >= PARALLEL_MIN && threads > 1) ? rowsOfGram.parallel() : rowsOfGram)
                .forEach(i -> {
                    double s = 0;
                    for (int j = 0; j <= i; j++) {
                        double g = dot(rowsOfA, i * n, rowsOfA, j * n, n) * dot(colsOfB, i * m, colsOfB, j * m, m);
                        s += i == j ? g : 2 * g;
                    }
                    perRow[i] = s;
                });
        run(body);
        double sum = 0;
        for (double s : perRow) {
            sum += s;
        }
        return sum;
    }

    // ---- tiling and the split across cores ----------------------------------------------------

    /** Tiles of at most TILE elements: whole rows when rows are short (B factors), column chunks when long (A). */
    static final class Tiling {
        final int rows, cols, colChunk, rowsPerTile, colTiles, tiles;

        Tiling(int rows, int cols) {
            this.rows = rows;
            this.cols = cols;
            this.colChunk = Math.max(1, Math.min(cols, TILE));
            this.rowsPerTile = Math.max(1, TILE / colChunk);
            this.colTiles = cols == 0 ? 0 : (cols + colChunk - 1) / colChunk;
            this.tiles = ((rows + rowsPerTile - 1) / rowsPerTile) * colTiles;
        }

        int row0(int t) { return (t / colTiles) * rowsPerTile; }
        int row1(int t) { return Math.min(rows, row0(t) + rowsPerTile); }
        int col0(int t) { return (t % colTiles) * colChunk; }
        int col1(int t) { return Math.min(cols, col0(t) + colChunk); }
    }

    interface TileBody {
        void run(int tile);
    }

    interface RowBlockBody {
        void run(int row0, int row1);
    }

    private void forEachTile(Tiling tiling, TileBody body) {
        if (threads == 1 || (long) tiling.rows * tiling.cols < PARALLEL_MIN || tiling.tiles < 2) {
            for (int t = 0; t < tiling.tiles; t++) {
                body.run(t);
            }
            return;
        }
        run(() -> IntStream.range(0, tiling.tiles).parallel().forEach(body::run));
    }

    private void forEachRowBlock(int rows, int cols, RowBlockBody body) {
        Tiling tiling = new Tiling(rows, Math.max(cols, 1));
        int rowsPerBlock = tiling.rowsPerTile;
        int blocks = (rows + rowsPerBlock - 1) / rowsPerBlock;
        TileBody perBlock = blk -> body.run(blk * rowsPerBlock, Math.min(rows, (blk + 1) * rowsPerBlock));
        if (threads == 1 || (long) rows * cols < PARALLEL_MIN || blocks < 2) {
            for (int blk = 0; blk < blocks; blk++) {
                perBlock.run(blk);
            }
            return;
        }
        run(() -> IntStream.range(0, blocks).parallel().forEach(perBlock::run));
    }

    /** Runs a parallel stream inside this backend's own pool, so the thread count is ours, not the JVM's. */
    private void run(Runnable parallelWork) {
        if (threads == 1 || Thread.currentThread() instanceof ForkJoinWorkerThread worker && worker.getPool() == pool) {
            parallelWork.run();
            return;
        }
        pool().submit(parallelWork).join();
    }

    private ForkJoinPool pool() {
        ForkJoinPool p = pool;
        if (p == null) {
            synchronized (this) {
                p = pool;
                if (p == null) {
                    String prefix = "fedlora-" + name() + "-";
                    AtomicInteger counter = new AtomicInteger();
                    p = new ForkJoinPool(threads, fjp -> {
                        ForkJoinWorkerThread t = ForkJoinPool.defaultForkJoinWorkerThreadFactory.newThread(fjp);
                        t.setName(prefix + counter.incrementAndGet());
                        t.setDaemon(true);
                        return t;
                    }, null, false);
                    pool = p;
                }
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

    // ---- heap accumulator ----------------------------------------------------------------------

    /** Sums in a float[] on the heap; every operation goes through the row primitives above. */
    final class CpuAccumulator implements Accumulator {
        private int rows, cols;
        private float[] sums;

        CpuAccumulator(int rows, int cols) {
            this.rows = rows;
            this.cols = cols;
            this.sums = new float[Math.multiplyExact(rows, cols)];
        }

        @Override
        public int rows() {
            return rows;
        }

        @Override
        public int cols() {
            return cols;
        }

        @Override
        public void add(Matrix src, float weight) {
            Tiling tiling = new Tiling(Math.min(rows, src.rows()), Math.min(cols, src.cols()));
            float[] s = sums;
            int stride = cols;
            forEachTile(tiling, tile -> addTile(s, stride, tiling.row0(tile), tiling.row1(tile),
                    tiling.col0(tile), tiling.col1(tile), src, weight));
        }

        @Override
        public void add(Accumulator other) {
            CpuAccumulator o = (CpuAccumulator) other;
            add(Matrix.of(o.sums, o.rows, o.cols), 1f);
        }

        @Override
        public void grow(int newRows, int newCols) {
            if (newRows < rows || newCols < cols) {
                throw new IllegalArgumentException("cannot shrink " + rows + "x" + cols + " to " + newRows + "x" + newCols);
            }
            if (newRows == rows && newCols == cols) {
                return;
            }
            float[] grown = new float[Math.multiplyExact(newRows, newCols)];
            for (int i = 0; i < rows; i++) {
                System.arraycopy(sums, i * cols, grown, i * newCols, cols);
            }
            sums = grown;
            rows = newRows;
            cols = newCols;
        }

        @Override
        public void finish(float[] out, float[] rowScale, float[] colScale) {
            float[] s = sums;
            int c = cols;
            forEachRowBlock(rows, cols, (r0, r1) -> {
                for (int i = r0; i < r1; i++) {
                    scale(out, i * c, s, i * c, c, rowScale == null ? 1f : rowScale[i], colScale, 0);
                }
            });
        }

        @Override
        public void close() {
            sums = new float[0];
            rows = 0;
            cols = 0;
        }
    }
}
