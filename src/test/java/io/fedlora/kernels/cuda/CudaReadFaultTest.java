package io.fedlora.kernels.cuda;

import static org.junit.jupiter.api.Assertions.assertThrows;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A memory-mapped client file truncated under fedlora is a read fault (the JVM's InternalError),
 * which the facade turns into "client unreadable". The packing and scanning threads must hand it
 * on as itself, not wrapped, so that the facade still recognises it.
 */
class CudaReadFaultTest {

    @Test
    void aTruncatedMappedClientFaultsAsItselfThroughTheThreads(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("client.bin");
        int rows = 256, cols = 16384; // 16 MiB of float32: above both thresholds for threads
        Files.write(file, new byte[rows * cols * 4]);
        ExecutorService threads = Executors.newFixedThreadPool(2);
        try (FileChannel channel = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE);
                Arena arena = Arena.ofShared(); CudaKernels cuda = new CudaKernels()) {
            MemorySegment mapped = channel.map(FileChannel.MapMode.READ_ONLY, 0, (long) rows * cols * 4, arena);
            Matrix client = Matrix.dense(mapped, DType.F32, rows, cols);
            channel.truncate(0);
            assertThrows(InternalError.class, () -> HostScan.allFinite(client, threads, 2));
            assertThrows(InternalError.class, () -> cuda.allFinite(client));
            assertThrows(InternalError.class, () -> cuda.weightedSum(new float[rows * cols], rows, cols, new Matrix[] {client},
                    new float[] {1f}, null, null));
        } finally {
            threads.shutdownNow();
        }
    }
}
