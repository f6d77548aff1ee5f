package io.fedlora.kernels.cuda;

import static io.fedlora.kernels.cuda.CudaFailure.check;
import static jcuda.driver.JCudaDriver.cuCtxSetCurrent;
import static jcuda.driver.JCudaDriver.cuDeviceGet;
import static jcuda.driver.JCudaDriver.cuDeviceGetAttribute;
import static jcuda.driver.JCudaDriver.cuDeviceGetName;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRelease;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRetain;
import static jcuda.driver.JCudaDriver.cuDeviceTotalMem;
import static jcuda.driver.JCudaDriver.cuDriverGetVersion;
import static jcuda.driver.JCudaDriver.cuEventCreate;
import static jcuda.driver.JCudaDriver.cuEventDestroy;
import static jcuda.driver.JCudaDriver.cuLaunchKernel;
import static jcuda.driver.JCudaDriver.cuMemAlloc;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemGetInfo;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoH;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoD;
import static jcuda.driver.JCudaDriver.cuMemsetD32Async;
import static jcuda.driver.JCudaDriver.cuModuleGetFunction;
import static jcuda.driver.JCudaDriver.cuModuleLoadDataJIT;
import static jcuda.driver.JCudaDriver.cuModuleUnload;
import static jcuda.driver.JCudaDriver.cuStreamCreate;
import static jcuda.driver.JCudaDriver.cuStreamDestroy;
import static jcuda.driver.JCudaDriver.cuStreamSynchronize;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Deque;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import jcuda.Pointer;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdevice_attribute;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUfunction;
import jcuda.driver.CUjit_option;
import jcuda.driver.CUmodule;
import jcuda.driver.CUresult;
import jcuda.driver.CUstream;
import jcuda.driver.JITOptions;

/**
 * The device session: the device's primary context, the PTX module with its cached functions
 * and their parameter sizes, the two streams, device memory, synchronous copies of small arrays
 * and kernel launches (the one place that decides launch geometry). Every driver call's result
 * is checked ({@link CudaFailure#check}).
 *
 * <p>Its monitor is the device lock (see {@link CudaKernels}): the methods that allocate, free,
 * queue work or change launch geometry hold it for the call; the waits ({@link #synchronize},
 * {@link #readInts}, {@link #readFloats}) do not, since the driver lets any thread wait for a
 * stream while others queue to it. {@link #makeCurrent} is per thread and needs no lock.
 */
final class CudaSession implements AutoCloseable {

    static final String ACCUMULATE = "fedlora_accumulate";
    static final String FINISH = "fedlora_finish";
    static final String PAD = "fedlora_pad";
    static final String ALL_FINITE = "fedlora_all_finite";
    static final String CONVERT = "fedlora_convert";
    private static final List<String> KERNELS = List.of(ACCUMULATE, FINISH, PAD, ALL_FINITE, CONVERT);

    static final String PTX_RESOURCE = "fedlora.ptx";

    /** Threads per block of every launch; {@code bin/gpu-check} overrides it to validate other block sizes. */
    private int threadsPerBlock = 256;
    /** Grid dimensions are capped; the kernels' grid-stride loops cover whatever the grid does not. */
    private static final int MAX_GRID = 65535;
    private static final int JIT_LOG_BYTES = 8192;

    private final CUdevice device = new CUdevice();
    private volatile CUcontext context;
    private CUmodule module;
    private final Map<String, CUfunction> functions = new HashMap<>();
    private Map<String, int[]> parameterSizes = Map.of();
    private CUstream copyStream;
    private CUstream computeStream;
    private String deviceName;
    private int major, minor, driverVersion;
    private long totalBytes;

    /** Opens device 0; on any failure frees what it created and throws (the first failure, later ones suppressed). */
    CudaSession() {
        try {
            open();
        } catch (Throwable t) {
            try {
                close();
            } catch (Throwable suppressed) {
                t.addSuppressed(suppressed);
            }
            throw t;
        }
    }

    private void open() {
        check(cuDeviceGet(device, 0), "cuDeviceGet");
        CUcontext primary = new CUcontext();
        check(cuDevicePrimaryCtxRetain(primary, device), "cuDevicePrimaryCtxRetain"); // shared with cuBLAS and anyone else
        context = primary;
        makeCurrent();

        byte[] name = new byte[256];
        check(cuDeviceGetName(name, name.length, device), "cuDeviceGetName");
        deviceName = new String(name, StandardCharsets.US_ASCII).replace("\0", "").trim();
        major = attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        minor = attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        long[] total = new long[1];
        check(cuDeviceTotalMem(total, device), "cuDeviceTotalMem");
        totalBytes = total[0];
        int[] driver = new int[1];
        check(cuDriverGetVersion(driver), "cuDriverGetVersion");
        driverVersion = driver[0];

        String ptx = ptx();
        module = load(ptx);
        parameterSizes = entryParameterSizes(ptx);
        for (String kernel : KERNELS) {
            CUfunction function = new CUfunction();
            check(cuModuleGetFunction(function, module, kernel), "cuModuleGetFunction(" + kernel + ")");
            functions.put(kernel, function);
            if (!parameterSizes.containsKey(kernel)) {
                throw new IllegalStateException("the PTX resource declares no parameters for " + kernel);
            }
        }

        // Blocking streams (flag 0): they also wait for the legacy stream, which the synchronous
        // copies of small arrays (scales) use, so those need no extra ordering.
        copyStream = stream();
        computeStream = stream();
    }

    /**
     * cuModuleLoadDataEx (through JCuda's JITOptions) with an error log buffer, so that a driver's
     * refusal of the PTX arrives with ptxas' reason instead of a bare CUresult.
     */
    static CUmodule load(String ptx) {
        CUmodule loaded = new CUmodule();
        JITOptions jit = new JITOptions();
        jit.putBytes(CUjit_option.CU_JIT_ERROR_LOG_BUFFER, new byte[JIT_LOG_BYTES]);
        jit.putInt(CUjit_option.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, JIT_LOG_BYTES);
        byte[] image = Arrays.copyOf(ptx.getBytes(StandardCharsets.US_ASCII), ptx.length() + 1); // NUL-terminated
        int result = cuModuleLoadDataJIT(loaded, Pointer.to(image), jit);
        if (result != CUresult.CUDA_SUCCESS) {
            String log = jit.getString(CUjit_option.CU_JIT_ERROR_LOG_BUFFER);
            log = log == null ? "" : log.replace("\0", "").strip();
            throw CudaFailure.withMessage("cuModuleLoadDataEx refused fedlora's PTX: " + CUresult.stringFor(result)
                    + (log.isEmpty() ? " (the driver wrote no log)" : ": " + log), result);
        }
        return loaded;
    }

    static String ptx() {
        try (InputStream in = CudaSession.class.getResourceAsStream(PTX_RESOURCE)) {
            if (in == null) {
                throw new IllegalStateException("the PTX resource " + PTX_RESOURCE + " is missing from fedlora's jar");
            }
            return new String(in.readAllBytes(), StandardCharsets.US_ASCII);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static final Pattern ENTRY = Pattern.compile("\\.entry\\s+(\\w+)\\s*\\(([^)]*)\\)");
    private static final Pattern PARAM = Pattern.compile("\\.param\\s+(?:\\.align\\s+\\d+\\s+)?\\.([a-z]+)(\\d+)\\s+\\w+(?:\\[(\\d+)])?");

    /** Each .entry's parameter sizes in bytes, read from the PTX text ({@code .u64} = 8, {@code .f32} = 4, {@code .b8 x[16]} = 16). */
    static Map<String, int[]> entryParameterSizes(String ptx) {
        Map<String, int[]> sizes = new LinkedHashMap<>();
        Matcher entry = ENTRY.matcher(ptx);
        while (entry.find()) {
            List<Integer> params = new ArrayList<>();
            Matcher param = PARAM.matcher(entry.group(2));
            while (param.find()) {
                int bits = Integer.parseInt(param.group(2));
                params.add(param.group(3) != null ? Integer.parseInt(param.group(3)) * bits / 8 : bits / 8);
            }
            sizes.put(entry.group(1), params.stream().mapToInt(Integer::intValue).toArray());
        }
        return sizes;
    }

    private int attribute(int attribute) {
        int[] value = new int[1];
        check(cuDeviceGetAttribute(value, attribute, device), "cuDeviceGetAttribute(" + attribute + ")");
        return value[0];
    }

    private static CUstream stream() {
        CUstream stream = new CUstream();
        check(cuStreamCreate(stream, 0), "cuStreamCreate");
        return stream;
    }

    synchronized CUevent event() {
        CUevent event = new CUevent();
        check(cuEventCreate(event, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        return event;
    }

    static void destroy(CUevent event) {
        check(cuEventDestroy(event), "cuEventDestroy");
    }

    String description() {
        return String.format("%s, compute capability %d.%d, %d MiB, CUDA driver %d.%d", deviceName, major, minor,
                totalBytes >> 20, driverVersion / 1000, driverVersion % 1000 / 10);
    }

    String deviceName() {
        return deviceName;
    }

    CUstream copyStream() {
        return copyStream;
    }

    CUstream computeStream() {
        return computeStream;
    }

    /** JCuda's current context is per thread; every entry point makes ours current first. */
    void makeCurrent() {
        CUcontext current = context;
        if (current == null) {
            throw new IllegalStateException("the CUDA backend is closed");
        }
        check(cuCtxSetCurrent(current), "cuCtxSetCurrent");
    }

    synchronized long freeBytes() {
        long[] free = new long[1], total = new long[1];
        check(cuMemGetInfo(free, total), "cuMemGetInfo");
        return free[0];
    }

    // ---- memory --------------------------------------------------------------------------------

    /** Device memory, or IllegalStateException naming what needed it and what was free. */
    synchronized CUdeviceptr alloc(long bytes, String what) {
        CUdeviceptr pointer = new CUdeviceptr();
        int result = cuMemAlloc(pointer, Math.max(bytes, 4));
        if (result == CUresult.CUDA_ERROR_OUT_OF_MEMORY) {
            throw CudaFailure.withMessage("CUDA device out of memory: " + what + " needs " + bytes + " bytes, "
                    + freeBytes() + " bytes are free", result);
        }
        check(result, "cuMemAlloc(" + bytes + " bytes for " + what + ")");
        return pointer;
    }

    /** Frees one allocation after the work that may still read it. */
    synchronized void free(CUdeviceptr pointer) {
        check(cuMemFree(pointer), "cuMemFree");
    }

    /**
     * Device memory for the span of one operation: everything allocated through the scope is
     * freed when it closes, each free attempted even when an earlier one fails, and a failure
     * while freeing never hides the operation's own (try-with-resources suppresses it).
     */
    final class Scope implements AutoCloseable {
        private final Deque<CUdeviceptr> owned = new ArrayDeque<>();

        CUdeviceptr alloc(long bytes, String what) {
            CUdeviceptr pointer = CudaSession.this.alloc(bytes, what);
            owned.push(pointer);
            return pointer;
        }

        /** A device copy of a small host array (scales), or null for null. */
        CUdeviceptr upload(float[] values, String what) {
            if (values == null) {
                return null;
            }
            CUdeviceptr pointer = alloc((long) values.length * Float.BYTES, what);
            // Synchronous, so outside the device lock: it waits for the legacy stream's barrier.
            check(cuMemcpyHtoD(pointer, Pointer.to(values), (long) values.length * Float.BYTES), "cuMemcpyHtoD(" + what + ")");
            return pointer;
        }

        @Override
        public void close() {
            Teardown teardown = new Teardown();
            while (!owned.isEmpty()) {
                CUdeviceptr pointer = owned.pop();
                teardown.run(() -> free(pointer));
            }
            teardown.rethrow();
        }
    }

    Scope scope() {
        return new Scope();
    }

    synchronized void zero(CUdeviceptr pointer, long floats) {
        check(cuMemsetD32Async(pointer, 0, floats, computeStream), "cuMemsetD32Async");
    }

    int[] readInts(CUdeviceptr from, int count) {
        int[] values = new int[count];
        synchronize();
        check(cuMemcpyDtoH(Pointer.to(values), from, (long) count * Integer.BYTES), "cuMemcpyDtoH");
        return values;
    }

    float[] readFloats(CUdeviceptr from, int count) {
        float[] values = new float[count];
        synchronize();
        check(cuMemcpyDtoH(Pointer.to(values), from, (long) count * Float.BYTES), "cuMemcpyDtoH");
        return values;
    }

    void synchronize() {
        check(cuStreamSynchronize(copyStream), "cuStreamSynchronize(copy stream)");
        check(cuStreamSynchronize(computeStream), "cuStreamSynchronize(compute stream)");
    }

    static CUdeviceptr offset(CUdeviceptr base, long floats) {
        return base == null ? null : base.withByteOffset(floats * Float.BYTES);
    }

    // ---- launches --------------------------------------------------------------------------------

    /** For bin/gpu-check's per-kernel harness: the block size of every later launch (a multiple of 32, at most 1024). */
    synchronized void threadsPerBlock(int threads) {
        if (threads < 32 || threads > 1024 || threads % 32 != 0) {
            throw new IllegalArgumentException("threads per block must be a multiple of 32 in [32, 1024], got " + threads);
        }
        threadsPerBlock = threads;
    }

    /**
     * Launches a kernel over a rows x cols tile on the compute stream. The one place that decides
     * geometry: {@code threadsPerBlock} threads, x along a row (coalesced); a block is 8 rows high
     * unless the tile has fewer than 8 rows, when it is one row. Each argument's size is checked
     * against the kernel's {@code .param} list in the PTX: a Java int where the kernel takes a
     * pointer would otherwise be read as garbage on the device.
     */
    synchronized void launch(String kernel, int rows, int cols, Object... args) {
        if (rows <= 0 || cols <= 0) {
            return;
        }
        checkArguments(kernel, args);
        int blockY = rows >= 8 ? 8 : 1;
        int blockX = threadsPerBlock / blockY;
        int gridX = (int) Math.min(MAX_GRID, ((long) cols + blockX - 1) / blockX);
        int gridY = (int) Math.min(MAX_GRID, ((long) rows + blockY - 1) / blockY);
        check(cuLaunchKernel(functions.get(kernel), gridX, gridY, 1, blockX, blockY, 1, 0, computeStream,
                parameters(args), null), "cuLaunchKernel(" + kernel + ")");
    }

    private void checkArguments(String kernel, Object[] args) {
        int[] sizes = parameterSizes.get(kernel);
        if (sizes == null) {
            throw new IllegalArgumentException("kernel " + kernel + " is not in the PTX resource");
        }
        if (sizes.length != args.length) {
            throw new IllegalArgumentException(kernel + " takes " + sizes.length + " parameters in the PTX, the launch passes "
                    + args.length);
        }
        for (int i = 0; i < args.length; i++) {
            int size = switch (args[i]) {
                case null -> Long.BYTES;
                case CUdeviceptr p -> Long.BYTES;
                case Integer v -> Integer.BYTES;
                case Float v -> Float.BYTES;
                default -> throw new IllegalArgumentException("kernel argument of type " + args[i].getClass());
            };
            if (size != sizes[i]) {
                throw new IllegalArgumentException(kernel + " parameter " + i + " is " + sizes[i] + " bytes in the PTX, the launch"
                        + " passes " + size + " (" + (args[i] == null ? "a null pointer" : args[i].getClass().getSimpleName()) + ")");
            }
        }
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

    // ---- teardown ------------------------------------------------------------------------------

    /**
     * Destroys what open() created, newest first; safe after a partial open. Every step is tried
     * even when an earlier one fails; the first failure is thrown, later ones suppressed.
     */
    @Override
    public void close() {
        if (context == null) {
            return;
        }
        Teardown teardown = new Teardown();
        teardown.run(this::makeCurrent);
        for (CUstream stream : new CUstream[] {computeStream, copyStream}) {
            if (stream != null) {
                teardown.run(() -> check(cuStreamSynchronize(stream), "cuStreamSynchronize"));
                teardown.run(() -> check(cuStreamDestroy(stream), "cuStreamDestroy"));
            }
        }
        computeStream = null;
        copyStream = null;
        if (module != null) {
            functions.clear();
            CUmodule loaded = module;
            teardown.run(() -> check(cuModuleUnload(loaded), "cuModuleUnload"));
            module = null;
        }
        context = null;
        teardown.run(() -> check(cuDevicePrimaryCtxRelease(device), "cuDevicePrimaryCtxRelease"));
        teardown.rethrow();
    }

    /** Runs teardown steps, keeping the first failure and suppressing the rest. */
    static final class Teardown {
        private RuntimeException first;

        void run(Runnable step) {
            try {
                step.run();
            } catch (RuntimeException e) {
                if (first == null) {
                    first = e;
                } else {
                    first.addSuppressed(e);
                }
            }
        }

        void rethrow() {
            if (first != null) {
                throw first;
            }
        }
    }
}
