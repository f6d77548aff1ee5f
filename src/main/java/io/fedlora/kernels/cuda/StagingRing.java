package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaFailure.check;
import static jcuda.driver.JCudaDriver.cuEventRecord;
import static jcuda.driver.JCudaDriver.cuEventSynchronize;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemFreeHost;
import static jcuda.driver.JCudaDriver.cuMemHostAlloc;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoHAsync;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoDAsync;
import static jcuda.driver.JCudaDriver.cuStreamSynchronize;
import static jcuda.driver.JCudaDriver.cuStreamWaitEvent;

import io.fedlora.tensor.Matrix;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Consumer;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;

/**
 * How host data reaches the device: {@value #SLOTS} staging slots, each a pinned host buffer
 * paired with a device buffer of the same size. Slots 0 and 1 take turns for inputs: while the
 * device accumulates from one, the host packs the next client into the other and the copy
 * stream uploads it, so the copy of client k+1 overlaps the arithmetic on client k. Two events
 * per slot order the streams: the copy stream waits for {@code consumed} (the device has
 * finished reading the slot) before overwriting it, and the compute stream waits for
 * {@code uploaded} before reading it; the host waits for {@code uploaded} before repacking the
 * pinned buffer. Slot 2 holds results on their way back. Work larger than a slot is cut into
 * tiles; the slot size follows the device's free memory ({@code cuMemGetInfo}), which is how a
 * small device ends up computing in more, smaller chunks.
 *
 * <p>Locks. Each input slot belongs to one operation at a time ({@link #withStaged} takes a free
 * one and gives it back), so packing into its pinned buffer, and the wait for its previous
 * upload, run without the device lock: two threads' operations pack at the same time. The device
 * lock (the {@link CudaSession} monitor) is held only while the block's copy, its events and the
 * kernels that read it are queued. The output slot belongs to one operation at a time as well
 * ({@link #lockOutput}), for as long as it brings tiles back (weightedSum, pad, finish). Order:
 * output slot, then input slots, then the device lock; nothing waits for a slot or the output
 * while holding the device lock, and only the holder of the output slot ever holds two input
 * slots at once, so the order cannot deadlock.
 *
 * <p>Packing (mmap or heap -> pinned) runs on up to {@link #PACKERS} threads for tiles of at
 * least {@link #PARALLEL_PACK_BYTES}: one core copies at roughly 5-10 GB/s, PCIe 5 x16 moves
 * about 55 GB/s (DESIGN §7), so a single packing thread would cap a host-resident round at a
 * fifth of the link. {@code cuMemHostRegister} on the mapped input would skip the copy, but it
 * pins (faults in and locks) every page of each client file for one read, which costs about
 * what the copy does; it stays the thing to measure once a GPU is lent.
 */
final class StagingRing implements AutoCloseable {
    static final int SLOTS = 3;
    static final int OUTPUT_SLOT = 2;
    /** Smallest useful slot (1024 floats); a device that cannot spare three of them twice over is refused. */
    static final long MIN_SLOT_BYTES = 4096;
    /** Largest slot: big enough to keep PCIe busy, small enough that pinned memory stays modest. */
    static final long MAX_SLOT_BYTES = 16L << 20;
    static final int PACKERS = Math.min(4, Runtime.getRuntime().availableProcessors());
    static final long PARALLEL_PACK_BYTES = 4L << 20;

    private final CudaSession session;
    private final long slotBytes;
    private final CUevent[] uploaded = new CUevent[SLOTS];
    private final CUevent[] consumed = new CUevent[SLOTS];
    private final CUdeviceptr[] deviceSlots = new CUdeviceptr[SLOTS];
    private final Pointer[] hostSlots = new Pointer[SLOTS];
    private final MemorySegment[] hostSegments = new MemorySegment[SLOTS];
    private ExecutorService packers;
    /** Input slots no operation holds, least recently released first (one thread alternates between them). */
    private final ArrayDeque<Integer> freeInputs = new ArrayDeque<>();
    private final ReentrantLock output = new ReentrantLock();
    /** Tests only: runs on the packing thread before a block is packed, outside the device lock. */
    private volatile Consumer<Matrix> packHook;
    private volatile boolean closed;
    /** Set by {@link #drain}: no operation may take a slot any more. */
    private boolean stopped;

    /** Sizes the slots from the device's free memory; on failure frees what it made and throws. */
    StagingRing(CudaSession session) {
        this.session = session;
        long free = session.freeBytes();
        if (free < 2 * SLOTS * MIN_SLOT_BYTES) {
            throw new UnsupportedOperationException("the CUDA device has " + free + " bytes of memory free; fedlora needs at least "
                    + 2 * SLOTS * MIN_SLOT_BYTES);
        }
        slotBytes = Math.min(MAX_SLOT_BYTES, Math.max(MIN_SLOT_BYTES, free / 16 / 256 * 256));
        try {
            for (int s = 0; s < SLOTS; s++) {
                uploaded[s] = session.event();
                consumed[s] = session.event();
                deviceSlots[s] = session.alloc(slotBytes, "staging slot");
                Pointer host = new Pointer();
                check(cuMemHostAlloc(host, slotBytes, 0), "cuMemHostAlloc(" + slotBytes + " bytes)");
                hostSlots[s] = host;
                hostSegments[s] = MemorySegment.ofBuffer(host.getByteBuffer(0, slotBytes));
            }
            for (int s = 0; s < OUTPUT_SLOT; s++) {
                freeInputs.add(s);
            }
        } catch (RuntimeException e) {
            try {
                close();
            } catch (RuntimeException suppressed) {
                e.addSuppressed(suppressed);
            }
            throw e;
        }
    }

    long slotBytes() {
        return slotBytes;
    }

    /** Floats a slot holds: the largest tile any operation moves at once. */
    int slotFloats() {
        return (int) (slotBytes / Float.BYTES);
    }

    /** A rectangle of a rows x cols matrix that fits one slot. */
    record Tile(int row0, int col0, int rows, int cols) {
    }

    /** Whole rows when they fit a slot (B factors, short rows), else column chunks of one row. */
    List<Tile> tiles(int rows, int cols) {
        List<Tile> tiles = new ArrayList<>();
        if (rows <= 0 || cols <= 0) {
            return tiles;
        }
        int tileCols = Math.min(cols, slotFloats());
        int tileRows = Math.max(1, Math.min(rows, slotFloats() / tileCols));
        for (int r0 = 0; r0 < rows; r0 += tileRows) {
            for (int c0 = 0; c0 < cols; c0 += tileCols) {
                tiles.add(new Tile(r0, c0, Math.min(tileRows, rows - r0), Math.min(tileCols, cols - c0)));
            }
        }
        return tiles;
    }

    /** A block of a source to stage: {@code rows x cols} at (row0, col0); empty when rows or cols is not positive. */
    record Block(Matrix src, int row0, int col0, int rows, int cols) {
        boolean empty() {
            return src == null || rows <= 0 || cols <= 0;
        }
    }

    /**
     * The one stage -> launch -> release step: packs {@code src}'s {@code rows x cols} block at
     * (row0, col0) into a free input slot and queues its upload, hands the device copy (dense,
     * row stride {@code cols}, in the source's dtype) to {@code kernels}, which queue the work
     * that reads it, then marks the slot free once that work has run. An empty block stages
     * nothing and hands null. {@code kernels} runs under the device lock; the packing does not.
     */
    void withStaged(Matrix src, int row0, int col0, int rows, int cols, Consumer<CUdeviceptr> kernels) {
        withStaged(List.of(new Block(src, row0, col0, rows, cols)), staged -> kernels.accept(staged[0]));
    }

    /**
     * {@link #withStaged(Matrix, int, int, int, int, Consumer)} for several blocks whose kernels
     * read them together (pad: the source and the donor). More than one non-empty block only
     * while holding the output slot (see the class comment: that keeps the lock order).
     */
    void withStaged(List<Block> blocks, Consumer<CUdeviceptr[]> kernels) {
        int count = blocks.size();
        int[] slots = new int[count];
        Arrays.fill(slots, -1);
        CUdeviceptr[] staged = new CUdeviceptr[count];
        try {
            for (int i = 0; i < count; i++) {
                Block block = blocks.get(i);
                if (block.empty()) {
                    continue;
                }
                if (i > 0 && !output.isHeldByCurrentThread()) {
                    throw new IllegalStateException("staging several blocks at once needs the output slot");
                }
                slots[i] = acquireInput();
                packInto(slots[i], block);
            }
            synchronized (session) {
                for (int i = 0; i < count; i++) {
                    if (slots[i] >= 0) {
                        staged[i] = upload(slots[i], blocks.get(i));
                    }
                }
                kernels.accept(staged);
                for (int slot : slots) {
                    if (slot >= 0) {
                        check(cuEventRecord(consumed[slot], session.computeStream()), "cuEventRecord(consumed)");
                    }
                }
            }
        } finally {
            for (int slot : slots) {
                if (slot >= 0) {
                    releaseInput(slot);
                }
            }
        }
    }

    /** Takes a free input slot, waiting while other operations hold both. */
    private int acquireInput() {
        synchronized (freeInputs) {
            while (freeInputs.isEmpty() && !stopped) {
                try {
                    freeInputs.wait();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException("interrupted while waiting for a CUDA staging slot", e);
                }
            }
            if (stopped) {
                throw new IllegalStateException("the CUDA backend is closed");
            }
            return freeInputs.poll();
        }
    }

    /**
     * Refuses new staging and waits until every operation that holds a slot has given it back,
     * so that closing never frees pinned memory a packing thread is writing (packing runs
     * outside the device lock). Call without holding the device lock: a slot's holder needs it
     * to finish.
     */
    void drain() {
        boolean interrupted = false;
        synchronized (freeInputs) {
            stopped = true;
            freeInputs.notifyAll();
            while (freeInputs.size() < OUTPUT_SLOT) {
                try {
                    freeInputs.wait();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        }
        output.lock(); // the output slot's holder, if any, has finished
        output.unlock();
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    private void releaseInput(int slot) {
        synchronized (freeInputs) {
            freeInputs.add(slot);
            freeInputs.notifyAll();
        }
    }

    /** A held resource, released by close (which throws nothing checked). */
    interface Held extends AutoCloseable {
        @Override
        void close();
    }

    /** Holds the output slot (device tile buffer and its pinned twin) until closed; see the class comment. */
    Held lockOutput() {
        output.lock();
        return output::unlock;
    }

    /** Host side of staging, without the device lock: the slot's previous upload has left its pinned buffer, then pack. */
    private void packInto(int slot, Block block) {
        check(cuEventSynchronize(uploaded[slot]), "cuEventSynchronize(uploaded)");
        Consumer<Matrix> hook = packHook;
        if (hook != null) {
            hook.accept(block.src());
        }
        long rowBytes = block.cols() * block.src().dtype().byteSize();
        pack(block.src(), block.row0(), block.col0(), block.rows(), rowBytes, hostSegments[slot]);
    }

    /** Device side, under the device lock: queue the packed slot's upload between its two events. */
    private CUdeviceptr upload(int slot, Block block) {
        long bytes = block.rows() * block.cols() * block.src().dtype().byteSize();
        // The device is done reading the slot before the copy overwrites it.
        check(cuStreamWaitEvent(session.copyStream(), consumed[slot], 0), "cuStreamWaitEvent(consumed)");
        check(cuMemcpyHtoDAsync(deviceSlots[slot], hostSlots[slot], bytes, session.copyStream()), "cuMemcpyHtoDAsync");
        check(cuEventRecord(uploaded[slot], session.copyStream()), "cuEventRecord(uploaded)");
        // The kernels that read the slot run after its upload.
        check(cuStreamWaitEvent(session.computeStream(), uploaded[slot], 0), "cuStreamWaitEvent(uploaded)");
        return deviceSlots[slot];
    }

    /** Tests only: {@code hook} runs before each block is packed, on the operation's thread, outside the device lock. */
    void packHook(Consumer<Matrix> hook) {
        packHook = hook;
    }

    /** Copies rows of src densely into pinned memory; large blocks are split by rows across the packing threads. */
    private void pack(Matrix src, int row0, int col0, int rows, long rowBytes, MemorySegment pinned) {
        long elementBytes = src.dtype().byteSize();
        long first = (src.offset() + (long) row0 * src.rowStride() + col0) * elementBytes;
        long stride = src.rowStride() * elementBytes;
        long bytes = rows * rowBytes;
        boolean dense = stride == rowBytes || rows == 1;
        if (bytes < PARALLEL_PACK_BYTES || PACKERS == 1) {
            packRange(src.data(), first, stride, rowBytes, dense, pinned, 0, rows);
            return;
        }
        // Rows per part, or for one long row byte ranges: PACKERS parts of at least 1 MiB each.
        int parts = (int) Math.min(PACKERS, Math.max(1, bytes >> 20));
        List<Future<?>> done = new ArrayList<>(parts);
        ExecutorService pool = packers();
        if (dense) {
            long part = (bytes + parts - 1) / parts;
            for (long at = 0; at < bytes; at += part) {
                long start = at, length = Math.min(part, bytes - at);
                done.add(pool.submit(() -> MemorySegment.copy(src.data(), first + start, pinned, start, length)));
            }
        } else {
            int partRows = (rows + parts - 1) / parts;
            for (int r = 0; r < rows; r += partRows) {
                int from = r, to = Math.min(rows, r + partRows);
                done.add(pool.submit(() -> packRange(src.data(), first, stride, rowBytes, false, pinned, from, to)));
            }
        }
        for (Future<?> f : done) {
            try {
                f.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while packing a tile for the GPU", e);
            } catch (ExecutionException e) {
                // As itself: a read fault of a mapped file (InternalError) must reach the facade as one.
                switch (e.getCause()) {
                    case RuntimeException r -> throw r;
                    case Error error -> throw error;
                    default -> throw new IllegalStateException("packing a tile for the GPU failed: " + e.getCause(), e.getCause());
                }
            }
        }
    }

    private static void packRange(MemorySegment data, long first, long stride, long rowBytes, boolean dense, MemorySegment pinned,
            int fromRow, int toRow) {
        if (dense) {
            MemorySegment.copy(data, first + fromRow * stride, pinned, fromRow * rowBytes, (toRow - fromRow) * rowBytes);
            return;
        }
        for (int i = fromRow; i < toRow; i++) {
            MemorySegment.copy(data, first + i * stride, pinned, i * rowBytes, rowBytes);
        }
    }

    synchronized ExecutorService packers() {
        if (closed) {
            throw new IllegalStateException("the CUDA backend is closed");
        }
        if (packers == null) {
            packers = Executors.newFixedThreadPool(PACKERS, task -> {
                Thread thread = new Thread(task, "fedlora-cuda-packer");
                thread.setDaemon(true);
                return thread;
            });
        }
        return packers;
    }

    /** The output slot's device buffer: tile sums and tile results. */
    CUdeviceptr outputSlot() {
        return deviceSlots[OUTPUT_SLOT];
    }

    /**
     * Copies a tile from the device into {@code out} (row stride {@code outCols}); waits for it.
     * Needs the output slot ({@link #lockOutput}); queues under the device lock, waits without it.
     */
    void download(CUdeviceptr from, float[] out, int outCols, Tile tile) {
        long rowBytes = (long) tile.cols() * Float.BYTES;
        synchronized (session) {
            check(cuMemcpyDtoHAsync(hostSlots[OUTPUT_SLOT], from, tile.rows() * rowBytes, session.computeStream()),
                    "cuMemcpyDtoHAsync");
        }
        check(cuStreamSynchronize(session.computeStream()), "cuStreamSynchronize(compute stream)");
        MemorySegment pinned = hostSegments[OUTPUT_SLOT];
        for (int i = 0; i < tile.rows(); i++) {
            MemorySegment.copy(pinned, ValueLayout.JAVA_FLOAT_UNALIGNED, i * rowBytes, out,
                    (tile.row0() + i) * outCols + tile.col0(), tile.cols());
        }
    }

    /** Frees the slots and events (after the streams are idle); every step tried, the first failure thrown. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        synchronized (freeInputs) {
            stopped = true;
            freeInputs.notifyAll();
        }
        CudaSession.Teardown teardown = new CudaSession.Teardown();
        teardown.run(session::synchronize);
        for (int s = 0; s < SLOTS; s++) {
            int slot = s;
            if (hostSlots[slot] != null) {
                hostSegments[slot] = null;
                teardown.run(() -> check(cuMemFreeHost(hostSlots[slot]), "cuMemFreeHost"));
                hostSlots[slot] = null;
            }
            if (deviceSlots[slot] != null) {
                teardown.run(() -> check(cuMemFree(deviceSlots[slot]), "cuMemFree"));
                deviceSlots[slot] = null;
            }
            for (CUevent[] events : new CUevent[][] {uploaded, consumed}) {
                if (events[slot] != null) {
                    CUevent event = events[slot];
                    teardown.run(() -> CudaSession.destroy(event));
                    events[slot] = null;
                }
            }
        }
        synchronized (this) {
            if (packers != null) {
                packers.shutdownNow();
                packers = null;
            }
        }
        teardown.rethrow();
    }
}
