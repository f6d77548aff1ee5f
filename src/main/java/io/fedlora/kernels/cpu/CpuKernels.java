package io.fedlora.kernels.cpu;

import io.fedlora.kernels.Accumulator;
import io.fedlora.kernels.Kernels;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinWorkerThread;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.IntConsumer;
import java.util.stream.IntStream;

/**
 * What the CPU backends share: the cache tiling, the split of large work across cores, and the
 * loops over rows, all written once in terms of five row primitives that each backend supplies.
 * The split never changes the arithmetic (every output element is computed by one thread, in
 * source order), so results do not depend on the thread count.
 *
 * <p>Every block of sums has rows padded to a multiple of {@link #ROW_ALIGN} floats: the batch
 * path's per-thread tile (zeroed, summed into by every source while it sits in L1, then scaled
 * into the caller's output, which is written once) and the streaming accumulators. A B factor's
 * short rows (rank 8, 37, 64, ...) are then whole vectors on the sums side for any rank (issue 8:
 * short rows of ranks that are not a multiple of the vector width were the slow case), and no
 * primitive ever writes past the logical end of a row of the caller's memory.
 */
public abstract class CpuKernels implements Kernels {

    /**
     * Elements per tile: 64 KiB of float32, in L2 while all clients pass. Measured on the issue-8
     * round (16 clients, ranks 8..64, one thread's CPU time): 8192 3.3-4.0 ms, 16384 3.2-3.5 ms,
     * 32768 3.2-3.5 ms; longer tiles mean longer runs of each B factor between switches.
     */
    static final int TILE = 16384;
    /**
     * Rows of every block of sums (a tile, an accumulator) are padded to a multiple of this many
     * floats: 64 bytes, one cache line and one vector of the widest species, so a row of any
     * length is whole vectors on the sums side.
     */
    static final int ROW_ALIGN = 16;
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

    // ---- the primitives a backend implements ------------------------------------------------
    // Package-private: only the two CPU backends beside this class supply or call them. Each works
    // on a block of rows with strides, so that the short rows of a B factor (a few to 64 elements)
    // stay inside one loop of the backend instead of one call per row.

    /**
     * {@code acc[accOff + i * accStride + t] = fma(w, src[srcOff + i * srcStride + t], acc[...])} for
     * {@code i < rows, t < n}; src offsets count elements. acc is a padded block: each run is followed
     * by sums of the same thread up to {@code padded(n)}, which a backend may rewrite with
     * {@code fma(w, 0, v)}, that is with v itself (sums start at +0 and never become -0, and weights
     * are finite), so that a short row is whole vectors on the acc side.
     */
    abstract void axpy(float[] acc, int accOff, int accStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n, float w);

    /**
     * {@code out[outOff + i * outStride + t] = in[inOff + i * inStride + t] * (rowScale[rowOff + i] *
     * colScale[colOff + t])} for {@code i < rows, t < n}, the factor rounded to float32 first; a null
     * scale is all ones. Writes exactly those elements of out; in is a padded block as for axpy.
     * Returns true iff every result is finite.
     */
    abstract boolean scale(float[] out, int outOff, int outStride, float[] in, int inOff, int inStride, int rows,
            int n, float[] rowScale, int rowOff, float[] colScale, int colOff);

    /** True iff no element of the {@code rows x n} block at {@code srcOff} (row stride srcStride) is NaN or infinite. */
    abstract boolean finite(MemorySegment src, DType dtype, long srcOff, long srcStride, int rows, int n);

    /** Conversion copy of a {@code rows x n} block to float32: {@code out[outOff + i * outStride + t] = src(...)}. */
    abstract void load(float[] out, int outOff, int outStride, MemorySegment src, DType dtype, long srcOff,
            long srcStride, int rows, int n);

    /**
     * {@code gram[i * r + j] += sum over rows[first .. first + count) of row[i] * row[j]}, rows of
     * length r back to back: the outer products behind NORM's Gram matrices.
     */
    abstract void gramUpdate(double[] gram, float[] rows, int first, int count, int r);

    // ---- Kernels -----------------------------------------------------------------------------

    @Override
    public Accumulator newAccumulator(int rows, int cols) {
        return new CpuAccumulator(rows, cols);
    }

    /** Per-thread tile of sums, padded rows: zeroed, summed into by every source, then scaled into out once. */
    private static final ThreadLocal<float[]> TILE_SUMS = ThreadLocal.withInitial(() -> new float[TILE + ROW_ALIGN]);

    @Override
    public int weightedSum(float[] out, int rows, int cols, Matrix[] sources, float[] weights,
            float[] rowScale, float[] colScale) {
        Tiling tiling = new Tiling(rows, cols);
        AtomicInteger firstBad = new AtomicInteger(Integer.MAX_VALUE);
        forEachTile(tiling, tile -> {
            int r0 = tiling.row0(tile), r1 = tiling.row1(tile), c0 = tiling.col0(tile), c1 = tiling.col1(tile);
            int width = padded(c1 - c0);
            float[] sums = TILE_SUMS.get();
            Arrays.fill(sums, 0, (r1 - r0) * width, 0f);
            addSources(sums, -r0 * width - c0, width, r0, r1, c0, c1, sources, weights);
            if (!scale(out, r0 * cols + c0, cols, sums, 0, width, r1 - r0, c1 - c0, rowScale, r0, colScale, c0)) {
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
            int re = Math.min(r1, src.rows()), ce = Math.min(c1, src.cols());
            if (re > r0 && ce > c0 && !finite(src.data(), src.dtype(), src.offset() + (long) r0 * src.rowStride() + c0,
                    src.rowStride(), re - r0, ce - c0)) {
                return k;
            }
        }
        return sources.length;
    }

    /**
     * Adds every source, in order, to the tile [r0, r1) x [c0, c1) whose cell (i, j) sits at
     * {@code sums[base + i * stride + j]}: one {@link #addTile} each here; a backend may fuse
     * several sources into one pass over the sums, as long as each cell still takes its sources'
     * fmas in source order.
     */
    void addSources(float[] sums, int base, int stride, int r0, int r1, int c0, int c1, Matrix[] sources,
            float[] weights) {
        for (int k = 0; k < sources.length; k++) {
            addTile(sums, base, stride, r0, r1, c0, c1, sources[k], weights[k]);
        }
    }

    /**
     * Sums cell (i, j) of the tile [r0, r1) x [c0, c1) sits at {@code sums[base + i * stride + j]}; adds w
     * times the part of src inside the tile, as one run when both are contiguous there.
     */
    final void addTile(float[] sums, int base, int stride, int r0, int r1, int c0, int c1, Matrix src, float w) {
        int re = Math.min(r1, src.rows());
        int ce = Math.min(c1, src.cols());
        if (re <= r0 || ce <= c0) {
            return;
        }
        long srcOff = src.offset() + (long) r0 * src.rowStride() + c0;
        int accOff = base + r0 * stride + c0;
        if (ce - c0 == stride && src.rowStride() == stride) {
            axpy(sums, accOff, 0, src.data(), src.dtype(), srcOff, 0, 1, (re - r0) * stride, w);
        } else {
            axpy(sums, accOff, stride, src.data(), src.dtype(), srcOff, src.rowStride(), re - r0, ce - c0, w);
        }
    }

    @Override
    public void pad(float[] out, int rows, int cols, Matrix src, float[] donor) {
        int width = Math.min(cols, src.cols());
        forEachRowBlock(rows, cols, (r0, r1) -> {
            int re = Math.min(r1, src.rows());
            if (re > r0) {
                load(out, r0 * cols, cols, src.data(), src.dtype(), src.offset() + (long) r0 * src.rowStride(),
                        src.rowStride(), re - r0, width);
            }
            for (int i = r0; i < r1; i++) {
                int copied = i < src.rows() ? width : 0;
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
            return finite(src.data(), src.dtype(), src.offset(), 0, 1, Math.toIntExact(src.size()));
        }
        return finite(src.data(), src.dtype(), src.offset(), src.rowStride(), src.rows(), src.cols());
    }

    @Override
    public double loraNormSquared(Matrix a, Matrix b) {
        int r = a.rows(), n = a.cols(), m = b.rows();
        // Both Gram matrices as sums of outer products of r-long rows: B's rows as they are, A's
        // columns after a transpose. The r x r sums stay in cache while the factor streams past once.
        float[] denseB = dense(b);
        float[] denseA = dense(a);
        float[] columnsOfA = new float[denseA.length];
        for (int i = 0; i < r; i++) {
            for (int j = 0; j < n; j++) {
                columnsOfA[j * r + i] = denseA[i * n + j];
            }
        }
        double[] gramA = gram(columnsOfA, n, r);
        double[] gramB = gram(denseB, m, r);
        // ||BA||_F^2 = sum_ij (A A^T)_ij (B^T B)_ij
        double sum = 0;
        for (int i = 0; i < r * r; i++) {
            sum += gramA[i] * gramB[i];
        }
        return sum;
    }

    /** A float32 copy of a view, row-major and dense: one run when the view is contiguous. */
    private float[] dense(Matrix m) {
        float[] out = new float[Math.multiplyExact(m.rows(), m.cols())];
        if (m.contiguous()) {
            load(out, 0, 0, m.data(), m.dtype(), m.offset(), 0, 1, out.length);
        } else {
            load(out, 0, m.cols(), m.data(), m.dtype(), m.offset(), m.rowStride(), m.rows(), m.cols());
        }
        return out;
    }

    /** {@code sum over rows x of x x^T} for {@code count} rows of length r, split across threads by row blocks. */
    private double[] gram(float[] rows, int count, int r) {
        int blocks = Math.max(1, Math.min(threads, (int) (((long) count * r * r) / PARALLEL_MIN)));
        double[][] partial = new double[blocks][r * r];
        int perBlock = (count + blocks - 1) / blocks;
        parallelFor(blocks, PARALLEL_MIN, blk -> {
            int first = blk * perBlock, last = Math.min(count, first + perBlock);
            if (last > first) {
                gramUpdate(partial[blk], rows, first, last - first, r);
            }
        });
        for (int blk = 1; blk < blocks; blk++) {
            for (int i = 0; i < r * r; i++) {
                partial[0][i] += partial[blk][i];
            }
        }
        return partial[0];
    }

    // ---- tiling and the split across cores ----------------------------------------------------

    /** {@code n} rounded up to a multiple of ROW_ALIGN: the row stride of a block of sums. */
    static int padded(int n) {
        return (n + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
    }

    /**
     * Tiles of sums of at most TILE elements (rows padded): whole rows when rows are short (B
     * factors), column chunks of TILE when longer (TILE is a multiple of ROW_ALIGN, so chunks
     * never share a padded vector).
     */
    static final class Tiling {
        final int rows, cols, colChunk, rowsPerTile, colTiles, tiles;

        Tiling(int rows, int cols) {
            this.rows = rows;
            this.cols = cols;
            this.colChunk = Math.max(1, Math.min(cols, TILE));
            this.rowsPerTile = Math.max(1, TILE / padded(colChunk));
            this.colTiles = cols == 0 ? 0 : (cols + colChunk - 1) / colChunk;
            this.tiles = ((rows + rowsPerTile - 1) / rowsPerTile) * colTiles;
        }

        int row0(int t) { return (t / colTiles) * rowsPerTile; }
        int row1(int t) { return Math.min(rows, row0(t) + rowsPerTile); }
        int col0(int t) { return (t % colTiles) * colChunk; }
        int col1(int t) { return Math.min(cols, col0(t) + colChunk); }
    }

    interface RowBlockBody {
        void run(int row0, int row1);
    }

    private void forEachTile(Tiling tiling, IntConsumer body) {
        parallelFor(tiling.tiles, (long) tiling.rows * tiling.cols, body);
    }

    private void forEachRowBlock(int rows, int cols, RowBlockBody body) {
        int rowsPerBlock = new Tiling(rows, Math.max(cols, 1)).rowsPerTile;
        int blocks = (rows + rowsPerBlock - 1) / rowsPerBlock;
        parallelFor(blocks, (long) rows * cols, blk -> body.run(blk * rowsPerBlock, Math.min(rows, (blk + 1) * rowsPerBlock)));
    }

    /** body(0 .. count-1), across this backend's threads when {@code work} (elements touched) is large enough. */
    private void parallelFor(int count, long work, IntConsumer body) {
        if (threads == 1 || work < PARALLEL_MIN || count < 2) {
            for (int i = 0; i < count; i++) {
                body.accept(i);
            }
            return;
        }
        run(() -> IntStream.range(0, count).parallel().forEach(body));
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

    /**
     * Sums in a float[] on the heap, rows padded to {@link #padded} (the padding stays +0), and
     * room for rows up to the next multiple of ROW_ALIGN: a round's ranks grow client by client,
     * and growing within that room is free (cells never written are +0). Every operation goes
     * through the row primitives above.
     */
    final class CpuAccumulator implements Accumulator {
        private int rows, cols, stride;
        private float[] sums;

        CpuAccumulator(int rows, int cols) {
            this.rows = rows;
            this.cols = cols;
            this.stride = padded(cols);
            this.sums = new float[Math.multiplyExact(padded(rows), stride)];
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
            int st = stride;
            forEachTile(tiling, tile -> addTile(s, 0, st, tiling.row0(tile), tiling.row1(tile),
                    tiling.col0(tile), tiling.col1(tile), src, weight));
        }

        @Override
        public void add(Accumulator other) {
            CpuAccumulator o = (CpuAccumulator) other;
            add(new Matrix(MemorySegment.ofArray(o.sums), DType.F32, 0, o.rows, o.cols, o.stride), 1f);
        }

        @Override
        public void grow(int newRows, int newCols) {
            if (newRows < rows || newCols < cols) {
                throw new IllegalArgumentException("cannot shrink " + rows + "x" + cols + " to " + newRows + "x" + newCols);
            }
            if (newRows == rows && newCols == cols) {
                return;
            }
            int newStride = padded(newCols);
            if (newStride == stride && (long) newRows * stride <= sums.length) {
                rows = newRows;
                cols = newCols;
                return;
            }
            float[] grown = new float[Math.multiplyExact(padded(newRows), newStride)];
            for (int i = 0; i < rows; i++) {
                System.arraycopy(sums, i * stride, grown, i * newStride, cols);
            }
            sums = grown;
            rows = newRows;
            cols = newCols;
            stride = newStride;
        }

        @Override
        public void finish(float[] out, float[] rowScale, float[] colScale) {
            float[] s = sums;
            int c = cols, st = stride;
            forEachRowBlock(rows, cols, (r0, r1) ->
                    scale(out, r0 * c, c, s, r0 * st, st, r1 - r0, c, rowScale, r0, colScale, 0));
        }

        @Override
        public void close() {
            sums = new float[0];
            rows = 0;
            cols = 0;
            stride = 0;
        }
    }
}
