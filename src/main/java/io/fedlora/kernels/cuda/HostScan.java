package io.fedlora.kernels.cuda;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Future;

/**
 * The finiteness scan of host-resident data, on the host. Scanning on the device would cost a
 * pack (host read and write), a DMA read and the PCIe transfer, then the client crosses PCIe
 * again to be accumulated; scanning here reads host memory once, so a round's client crosses
 * PCIe once, for the sum. Eight bytes at a time: an element is NaN or infinite iff its exponent
 * bits are all ones, tested for every lane of a long at once (the zero-lane test of Hacker's
 * Delight 6-1 on {@code (x & mask) ^ mask}). Must match ScalarKernels.allFinite.
 */
final class HostScan {
    /** Below this many bytes one thread scans; above, rows are split across the packing threads. */
    static final long PARALLEL_BYTES = 8L << 20;

    private HostScan() {
    }

    static boolean allFinite(Matrix src, ExecutorService threads, int parts) {
        long bytes = (long) src.rows() * src.cols() * src.dtype().byteSize();
        if (bytes < PARALLEL_BYTES || parts <= 1 || src.rows() < parts) {
            return rowsFinite(src, 0, src.rows());
        }
        int partRows = (src.rows() + parts - 1) / parts;
        List<Future<Boolean>> results = new ArrayList<>();
        for (int r = 0; r < src.rows(); r += partRows) {
            int from = r, to = Math.min(src.rows(), r + partRows);
            results.add(threads.submit(() -> rowsFinite(src, from, to)));
        }
        boolean finite = true;
        for (Future<Boolean> result : results) {
            try {
                finite &= result.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while scanning for NaN and infinity", e);
            } catch (ExecutionException e) {
                // As itself: a read fault of a mapped file (InternalError) must reach the facade as one.
                switch (e.getCause()) {
                    case RuntimeException r -> throw r;
                    case Error error -> throw error;
                    default -> throw new IllegalStateException("scanning for NaN and infinity failed: " + e.getCause(), e.getCause());
                }
            }
        }
        return finite;
    }

    private static boolean rowsFinite(Matrix src, int fromRow, int toRow) {
        DType dtype = src.dtype();
        int size = dtype.byteSize();
        long mask = switch (dtype) {
            case F32 -> 0x7f8000007f800000L;
            case BF16 -> 0x7f807f807f807f80L;
            case F16 -> 0x7c007c007c007c00L;
        };
        long ones = size == 4 ? 0x0000000100000001L : 0x0001000100010001L;
        long highs = size == 4 ? 0x8000000080000000L : 0x8000800080008000L;
        MemorySegment data = src.data();
        long rowBytes = (long) src.cols() * size;
        for (int i = fromRow; i < toRow; i++) {
            long first = (src.offset() + (long) i * src.rowStride()) * size;
            long end = first + rowBytes, at = first;
            for (; at + Long.BYTES <= end; at += Long.BYTES) {
                long z = (data.get(ValueLayout.JAVA_LONG_UNALIGNED, at) & mask) ^ mask; // a lane is 0 iff non-finite
                if (((z - ones) & ~z & highs) != 0) {
                    return false;
                }
            }
            for (; at < end; at += size) { // the tail, element by element
                long bits = size == 4 ? data.get(ValueLayout.JAVA_INT_UNALIGNED, at) : data.get(ValueLayout.JAVA_SHORT_UNALIGNED, at);
                long lane = mask & (size == 4 ? 0xffffffffL : 0xffffL);
                if ((bits & lane) == lane) {
                    return false;
                }
            }
        }
        return true;
    }
}
