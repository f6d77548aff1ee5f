package io.fedlora.kernels.cuda;

import static jcuda.driver.JCudaDriver.cuCtxSetCurrent;
import static jcuda.driver.JCudaDriver.cuDeviceGet;
import static jcuda.driver.JCudaDriver.cuDeviceGetAttribute;
import static jcuda.driver.JCudaDriver.cuDeviceGetCount;
import static jcuda.driver.JCudaDriver.cuDeviceGetName;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRelease;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRetain;
import static jcuda.driver.JCudaDriver.cuDeviceTotalMem;
import static jcuda.driver.JCudaDriver.cuDriverGetVersion;
import static jcuda.driver.JCudaDriver.cuEventCreate;
import static jcuda.driver.JCudaDriver.cuEventDestroy;
import static jcuda.driver.JCudaDriver.cuEventRecord;
import static jcuda.driver.JCudaDriver.cuEventSynchronize;
import static jcuda.driver.JCudaDriver.cuInit;
import static jcuda.driver.JCudaDriver.cuLaunchKernel;
import static jcuda.driver.JCudaDriver.cuMemAlloc;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemFreeHost;
import static jcuda.driver.JCudaDriver.cuMemGetInfo;
import static jcuda.driver.JCudaDriver.cuMemHostAlloc;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoH;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoHAsync;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoD;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoDAsync;
import static jcuda.driver.JCudaDriver.cuMemsetD32Async;
import static jcuda.driver.JCudaDriver.cuModuleGetFunction;
import static jcuda.driver.JCudaDriver.cuModuleLoadData;
import static jcuda.driver.JCudaDriver.cuModuleUnload;
import static jcuda.driver.JCudaDriver.cuStreamCreate;
import static jcuda.driver.JCudaDriver.cuStreamDestroy;
import static jcuda.driver.JCudaDriver.cuStreamSynchronize;
import static jcuda.driver.JCudaDriver.cuStreamWaitEvent;

import io.fedlora.tensor.Matrix;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import jcuda.CudaException;
import jcuda.Pointer;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdevice_attribute;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.CUstream;
import jcuda.driver.JCudaDriver;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasHandle;
import jcuda.jcublas.cublasOperation;
import jcuda.runtime.cudaStream_t;

/**
 * Every JCuda and JCublas call of the CUDA backend, in one place: the probe, the device's primary
 * context, the PTX module and its cached functions, two streams, the staging slots, launch
 * geometry, allocation and copies. Not thread-safe: {@link CudaKernels} serialises callers on
 * this object.
 *
 * <p>Host data reaches the device through {@value #SLOTS} staging slots, each a pinned host
 * buffer paired with a device buffer of the same size. Slots 0 and 1 take turns for inputs: while
 * the device accumulates from one, the host packs the next client into the other and the copy
 * stream uploads it, so the copy of client k+1 overlaps the arithmetic on client k (events order
 * the two streams). Slot 2 holds results on their way back. Work larger than a slot is cut into
 * tiles; the slot size follows the device's free memory ({@code cuMemGetInfo}), which is how a
 * small device ends up computing in more, smaller chunks.
 */
final class CudaDevice implements AutoCloseable {

    static final String ACCUMULATE = "fedlora_accumulate";
    static final String FINISH = "fedlora_finish";
    static final String PAD = "fedlora_pad";
    static final String ALL_FINITE = "fedlora_all_finite";
    static final String CONVERT = "fedlora_convert";
    private static final List<String> KERNELS = List.of(ACCUMULATE, FINISH, PAD, ALL_FINITE, CONVERT);

    static final String PTX_RESOURCE = "fedlora.ptx";

    static final int SLOTS = 3;
    static final int OUTPUT_SLOT = 2;
    /** Smallest useful slot (1024 floats); a device that cannot spare three of them twice over is refused. */
    static final long MIN_SLOT_BYTES = 4096;
    /** Largest slot: big enough to keep PCIe busy, small enough that pinned memory stays modest. */
    static final long MAX_SLOT_BYTES = 16L << 20;

    private static final int THREADS_PER_BLOCK = 256;
    /** Grid dimensions are capped; the kernels' grid-stride loops cover whatever the grid does not. */
    private static final int MAX_GRID = 65535;

    // ---- the one probe ------------------------------------------------------------------------

    /** Runs once per JVM, on first use; after a failure nothing touches JCuda again. */
    private static final class Probe {
        static final String CAUSE = probe();

        private static String probe() {
            try {
                JCudaDriver.setExceptionsEnabled(true);
                cuInit(0);
                int[] count = new int[1];
                cuDeviceGetCount(count);
                if (count[0] == 0) {
                    return "the CUDA driver reports no device";
                }
                JCublas2.setExceptionsEnabled(true); // loads JCublas2, which needs libcublas.so.12
                return null;
            } catch (Throwable t) { // UnsatisfiedLinkError, NoClassDefFoundError, CudaException, ...
                return describe(t);
            }
        }

        private static String describe(Throwable failure) {
            // One line: JCuda's loader error spans dozens of lines of nested stack traces, of which
            // the first line and the dynamic linker's own complaint are what a reader needs.
            StringBuilder chain = new StringBuilder();
            for (Throwable t = failure; t != null; t = t.getCause()) {
                String full = String.valueOf(t);
                chain.append(chain.isEmpty() ? "" : "; caused by ").append(full.lines().findFirst().orElse(""));
                full.lines().filter(line -> line.contains("cannot open shared object file")).findFirst()
                        .ifPresent(line -> chain.append(": ").append(line.substring(line.lastIndexOf(": ", line.indexOf("cannot")
                                - 3) + 2).trim()));
            }
            String text = chain.toString();
            if (text.contains("libcuda.so")) {
                return "the CUDA driver (libcuda.so.1) is missing: no NVIDIA driver is installed, or, to use the"
                        + " fedlora device emulator, put native/build on LD_LIBRARY_PATH (" + text + ")";
            }
            if (text.contains("libcublas")) {
                return "cuBLAS (libcublas.so.12) is missing: install the CUDA 12 toolkit libraries (" + text + ")";
            }
            if (text.contains("CUDA_ERROR_NO_DEVICE")) {
                return "the CUDA driver found no device (" + text + ")";
            }
            return "the CUDA driver could not be initialised (" + text + ")";
        }
    }

    /** Null when CUDA can run here, else why not. */
    static String unavailabilityCause() {
        return Probe.CAUSE;
    }

    // ---- what this instance created (closed in reverse) ---------------------------------------

    private final CUdevice device = new CUdevice();
    private CUcontext context;
    private CUmodule module;
    private final Map<String, CUfunction> functions = new HashMap<>();
    private CUstream copyStream;
    private CUstream computeStream;
    private final CUevent[] uploaded = new CUevent[SLOTS];
    private final CUevent[] consumed = new CUevent[SLOTS];
    private final CUdeviceptr[] deviceSlots = new CUdeviceptr[SLOTS];
    private final Pointer[] hostSlots = new Pointer[SLOTS];
    private final MemorySegment[] hostSegments = new MemorySegment[SLOTS];
    private cublasHandle cublas;
    private long slotBytes;
    private int nextInput;
    private String description;

    /** Opens device 0, or throws UnsupportedOperationException saying why it cannot be used. */
    CudaDevice() {
        String cause = Probe.CAUSE;
        if (cause != null) {
            throw new UnsupportedOperationException(cause);
        }
        try {
            open();
        } catch (Throwable t) {
            try {
                close();
            } catch (Throwable suppressed) {
                t.addSuppressed(suppressed);
            }
            if (t instanceof UnsupportedOperationException unsupported) {
                throw unsupported;
            }
            throw new UnsupportedOperationException("the CUDA device could not be set up: " + t, t);
        }
    }

    private void open() {
        cuDeviceGet(device, 0);
        CUcontext primary = new CUcontext();
        cuDevicePrimaryCtxRetain(primary, device); // shared with cuBLAS and anyone else in the process
        context = primary;
        makeCurrent();

        byte[] name = new byte[256];
        cuDeviceGetName(name, name.length, device);
        int major = attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        int minor = attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        long[] total = new long[1];
        cuDeviceTotalMem(total, device);
        int[] driver = new int[1];
        cuDriverGetVersion(driver);

        long free = freeBytes();
        slotBytes = Math.min(MAX_SLOT_BYTES, Math.max(MIN_SLOT_BYTES, free / 16 / 256 * 256));
        if (free < 2 * SLOTS * MIN_SLOT_BYTES) {
            throw new UnsupportedOperationException("the CUDA device has " + free + " bytes of memory free; fedlora needs at least "
                    + 2 * SLOTS * MIN_SLOT_BYTES);
        }

        module = new CUmodule();
        cuModuleLoadData(module, ptx());
        for (String kernel : KERNELS) {
            CUfunction function = new CUfunction();
            cuModuleGetFunction(function, module, kernel);
            functions.put(kernel, function);
        }

        // Blocking streams (flag 0): they also wait for the legacy stream, which the synchronous
        // copies of small arrays (scales, flags) use, so those need no extra ordering.
        copyStream = new CUstream();
        cuStreamCreate(copyStream, 0);
        computeStream = new CUstream();
        cuStreamCreate(computeStream, 0);
        for (int s = 0; s < SLOTS; s++) {
            uploaded[s] = event();
            consumed[s] = event();
            deviceSlots[s] = alloc(slotBytes, "staging slot");
            Pointer host = new Pointer();
            cuMemHostAlloc(host, slotBytes, 0);
            hostSlots[s] = host;
            hostSegments[s] = MemorySegment.ofBuffer(host.getByteBuffer(0, slotBytes));
        }

        cublasHandle handle = new cublasHandle();
        JCublas2.cublasCreate(handle);
        cublas = handle;
        JCublas2.cublasSetStream(cublas, new cudaStream_t(computeStream));

        description = String.format("%s, compute capability %d.%d, %d MiB, CUDA driver %d.%d, staging %d KiB x %d",
                new String(name, StandardCharsets.US_ASCII).trim().replace("\0", ""), major, minor, total[0] >> 20,
                driver[0] / 1000, driver[0] % 1000 / 10, slotBytes >> 10, SLOTS);
    }

    private static byte[] ptx() {
        try (InputStream in = CudaDevice.class.getResourceAsStream(PTX_RESOURCE)) {
            if (in == null) {
                throw new IllegalStateException("the PTX resource " + PTX_RESOURCE + " is missing from fedlora's jar");
            }
            byte[] text = in.readAllBytes();
            return Arrays.copyOf(text, text.length + 1); // the driver reads PTX as a NUL-terminated string
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private int attribute(int attribute) {
        int[] value = new int[1];
        cuDeviceGetAttribute(value, attribute, device);
        return value[0];
    }

    private static CUevent event() {
        CUevent event = new CUevent();
        cuEventCreate(event, CUevent_flags.CU_EVENT_DISABLE_TIMING);
        return event;
    }

    String description() {
        return description;
    }

    /** JCuda's current context is per thread; every entry point makes ours current first. */
    void makeCurrent() {
        cuCtxSetCurrent(context);
    }

    long freeBytes() {
        long[] free = new long[1], total = new long[1];
        cuMemGetInfo(free, total);
        return free[0];
    }

    /** Floats a slot holds: the largest tile any operation moves at once. */
    int slotFloats() {
        return (int) (slotBytes / Float.BYTES);
    }

    // ---- tiles ---------------------------------------------------------------------------------

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

    // ---- staging -------------------------------------------------------------------------------

    /** The input slot to use next; inputs alternate so that packing one overlaps the device using the other. */
    int nextInputSlot() {
        int slot = nextInput;
        nextInput ^= 1;
        return slot;
    }

    /**
     * Packs {@code src}'s {@code rows x cols} block at (row0, col0), in its own dtype, densely into
     * the slot's pinned buffer and queues its upload on the copy stream; the compute stream waits
     * for it. Returns the device copy (row stride {@code cols}).
     */
    CUdeviceptr stage(int slot, Matrix src, int row0, int col0, int rows, int cols) {
        cuEventSynchronize(uploaded[slot]); // the slot's previous upload has left the pinned buffer
        long elementBytes = src.dtype().byteSize();
        long rowBytes = cols * elementBytes;
        long bytes = rows * rowBytes;
        MemorySegment pinned = hostSegments[slot];
        long first = (src.offset() + (long) row0 * src.rowStride() + col0) * elementBytes;
        if (src.rowStride() == cols || rows == 1) {
            MemorySegment.copy(src.data(), first, pinned, 0, bytes);
        } else {
            long stride = src.rowStride() * elementBytes;
            for (int i = 0; i < rows; i++) {
                MemorySegment.copy(src.data(), first + i * stride, pinned, i * rowBytes, rowBytes);
            }
        }
        cuStreamWaitEvent(copyStream, consumed[slot], 0); // the device is done reading the slot
        cuMemcpyHtoDAsync(deviceSlots[slot], hostSlots[slot], bytes, copyStream);
        cuEventRecord(uploaded[slot], copyStream);
        cuStreamWaitEvent(computeStream, uploaded[slot], 0);
        return deviceSlots[slot];
    }

    /** Marks the slot free again once the kernels queued so far on the compute stream have run. */
    void release(int slot) {
        cuEventRecord(consumed[slot], computeStream);
    }

    /** The output slot's device buffer: tile sums and tile results. */
    CUdeviceptr outputSlot() {
        return deviceSlots[OUTPUT_SLOT];
    }

    /** Copies a tile from the device into {@code out} (row stride {@code outCols}); waits for it. */
    void download(CUdeviceptr from, float[] out, int outCols, Tile tile) {
        long rowBytes = (long) tile.cols() * Float.BYTES;
        cuMemcpyDtoHAsync(hostSlots[OUTPUT_SLOT], from, tile.rows() * rowBytes, computeStream);
        cuStreamSynchronize(computeStream);
        MemorySegment pinned = hostSegments[OUTPUT_SLOT];
        for (int i = 0; i < tile.rows(); i++) {
            MemorySegment.copy(pinned, ValueLayout.JAVA_FLOAT_UNALIGNED, i * rowBytes, out,
                    (tile.row0() + i) * outCols + tile.col0(), tile.cols());
        }
    }

    // ---- memory --------------------------------------------------------------------------------

    /** Device memory, or IllegalStateException naming what needed it and what was free. */
    CUdeviceptr alloc(long bytes, String what) {
        CUdeviceptr pointer = new CUdeviceptr();
        try {
            cuMemAlloc(pointer, Math.max(bytes, 4));
        } catch (CudaException e) {
            if (String.valueOf(e.getMessage()).contains("CUDA_ERROR_OUT_OF_MEMORY")) {
                throw new IllegalStateException("CUDA device out of memory: " + what + " needs " + bytes + " bytes, "
                        + freeBytes() + " bytes are free", e);
            }
            throw e;
        }
        return pointer;
    }

    /** Frees each non-null pointer, after the work that may still read it. */
    void free(CUdeviceptr... pointers) {
        boolean synced = false;
        for (CUdeviceptr p : pointers) {
            if (p != null) {
                if (!synced) {
                    synchronize();
                    synced = true;
                }
                cuMemFree(p);
            }
        }
    }

    void zero(CUdeviceptr pointer, long floats) {
        cuMemsetD32Async(pointer, 0, floats, computeStream);
    }

    /** A device copy of a small host array (scales), or null for null. */
    CUdeviceptr upload(float[] values, String what) {
        if (values == null) {
            return null;
        }
        CUdeviceptr pointer = alloc((long) values.length * Float.BYTES, what);
        cuMemcpyHtoD(pointer, Pointer.to(values), (long) values.length * Float.BYTES);
        return pointer;
    }

    int[] readInts(CUdeviceptr from, int count) {
        int[] values = new int[count];
        synchronize();
        cuMemcpyDtoH(Pointer.to(values), from, (long) count * Integer.BYTES);
        return values;
    }

    float[] readFloats(CUdeviceptr from, int count) {
        float[] values = new float[count];
        synchronize();
        cuMemcpyDtoH(Pointer.to(values), from, (long) count * Float.BYTES);
        return values;
    }

    void synchronize() {
        cuStreamSynchronize(copyStream);
        cuStreamSynchronize(computeStream);
    }

    static CUdeviceptr offset(CUdeviceptr base, long floats) {
        return base == null ? null : base.withByteOffset(floats * Float.BYTES);
    }

    // ---- launches --------------------------------------------------------------------------------

    /**
     * Launches a kernel over a rows x cols tile on the compute stream. The one place that decides
     * geometry: 256 threads a block, x along a row (coalesced); a block is 32 x 8 unless the tile
     * has fewer than 8 rows, when it is one row of 256.
     */
    void launch(String kernel, int rows, int cols, Object... args) {
        if (rows <= 0 || cols <= 0) {
            return;
        }
        int blockY = rows >= 8 ? 8 : 1;
        int blockX = THREADS_PER_BLOCK / blockY;
        int gridX = (int) Math.min(MAX_GRID, ((long) cols + blockX - 1) / blockX);
        int gridY = (int) Math.min(MAX_GRID, ((long) rows + blockY - 1) / blockY);
        cuLaunchKernel(functions.get(kernel), gridX, gridY, 1, blockX, blockY, 1, 0, computeStream,
                parameters(args), null);
    }

    /** kernelParams: one pointer per argument, to a device pointer (null: 0), an int or a float. */
    private static Pointer parameters(Object... args) {
        Pointer[] pointers = new Pointer[args.length];
        for (int i = 0; i < args.length; i++) {
            pointers[i] = switch (args[i]) {
                case null -> Pointer.to(new CUdeviceptr());
                case CUdeviceptr p -> Pointer.to(p);
                case Integer v -> Pointer.to(new int[] {v});
                case Float v -> Pointer.to(new float[] {v});
                default -> throw new IllegalArgumentException("kernel argument of type " + args[i].getClass());
            };
        }
        return Pointer.to(pointers);
    }

    /**
     * C (r x r, column-major) = X^T X when {@code transposeFirst}, else X X^T, plus beta C, where X
     * is column-major with leading dimension ld: {@code rows x inner} or {@code inner x rows}.
     */
    void gram(CUdeviceptr x, int ld, int r, int inner, boolean transposeFirst, boolean accumulate, CUdeviceptr c) {
        Pointer one = Pointer.to(new float[] {1f});
        Pointer beta = Pointer.to(new float[] {accumulate ? 1f : 0f});
        if (transposeFirst) {
            JCublas2.cublasSgemm(cublas, cublasOperation.CUBLAS_OP_T, cublasOperation.CUBLAS_OP_N, r, r, inner, one, x, ld, x,
                    ld, beta, c, r);
        } else {
            JCublas2.cublasSgemm(cublas, cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_T, r, r, inner, one, x, ld, x,
                    ld, beta, c, r);
        }
    }

    // ---- teardown ------------------------------------------------------------------------------

    /** Destroys what open() created, newest first; safe after a partial open. */
    @Override
    public void close() {
        if (context == null) {
            return;
        }
        makeCurrent();
        if (copyStream != null && computeStream != null) {
            synchronize();
        }
        if (cublas != null) {
            JCublas2.cublasDestroy(cublas);
            cublas = null;
        }
        for (int s = 0; s < SLOTS; s++) {
            if (hostSlots[s] != null) {
                hostSegments[s] = null;
                cuMemFreeHost(hostSlots[s]);
                hostSlots[s] = null;
            }
            if (deviceSlots[s] != null) {
                cuMemFree(deviceSlots[s]);
                deviceSlots[s] = null;
            }
            for (CUevent[] events : new CUevent[][] {uploaded, consumed}) {
                if (events[s] != null) {
                    cuEventDestroy(events[s]);
                    events[s] = null;
                }
            }
        }
        for (CUstream stream : new CUstream[] {computeStream, copyStream}) {
            if (stream != null) {
                cuStreamDestroy(stream);
            }
        }
        computeStream = null;
        copyStream = null;
        if (module != null) {
            functions.clear();
            cuModuleUnload(module);
            module = null;
        }
        context = null;
        cuDevicePrimaryCtxRelease(device);
    }
}
