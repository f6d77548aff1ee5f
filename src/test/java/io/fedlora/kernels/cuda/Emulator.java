package io.fedlora.kernels.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Optional;

/**
 * The device emulator's test hooks (native/README.md), reached through the FFM API in the
 * libcuda.so.1 the process loaded: the scheduler seed, failure injection, the live-allocation
 * count, the host-to-device byte counters and the last error. Absent on a real driver, where the
 * tests that need them are skipped.
 */
final class Emulator {
    private static final Linker LINKER = Linker.nativeLinker();
    private static final Optional<SymbolLookup> LIBRARY = lookup();

    private Emulator() {
    }

    private static Optional<SymbolLookup> lookup() {
        try {
            SymbolLookup library = SymbolLookup.libraryLookup("libcuda.so.1", Arena.global());
            return library.find("fedlora_emu_set_seed").isPresent() ? Optional.of(library) : Optional.empty();
        } catch (IllegalArgumentException e) { // no libcuda.so.1 at all
            return Optional.empty();
        }
    }

    /** True when the libcuda.so.1 on the library path is the emulator. */
    static boolean present() {
        return LIBRARY.isPresent();
    }

    private static MethodHandle handle(String name, FunctionDescriptor descriptor) {
        return LINKER.downcallHandle(LIBRARY.orElseThrow().find(name).orElseThrow(), descriptor);
    }

    static void setSeed(long seed) {
        try {
            handle("fedlora_emu_set_seed", FunctionDescriptor.ofVoid(ValueLayout.JAVA_LONG)).invokeExact(seed);
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    /**
     * The nth next call of {@code function} fails with CUDA_ERROR_UNKNOWN; 0 disarms. Returns how
     * many calls the previously armed failure still had to wait (0: it fired, or none was armed).
     */
    static int fail(String function, int nth) {
        try (Arena arena = Arena.ofConfined()) {
            return (int) handle("fedlora_emu_fail", FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS,
                    ValueLayout.JAVA_INT)).invokeExact(arena.allocateFrom(function), nth);
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    /** The next kernel launched faults (CUDA_ERROR_ILLEGAL_ADDRESS) when it runs, breaking the context for good. */
    static void faultNextLaunch() {
        try {
            handle("fedlora_emu_fault_next_launch", FunctionDescriptor.ofVoid()).invokeExact();
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    /** Live device allocations, pinned host buffers, streams, events and modules. */
    static int liveObjects() {
        try {
            return (int) handle("fedlora_emu_live_objects", FunctionDescriptor.of(ValueLayout.JAVA_INT)).invokeExact();
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    /**
     * Bytes accepted by host-to-device copies since the emulator loaded: {@code cuMemcpyHtoDAsync}
     * (the staging ring's uploads of client data) when {@code asynchronous}, else the synchronous
     * {@code cuMemcpyHtoD} (small arrays: scales).
     */
    static long htodBytes(boolean asynchronous) {
        try {
            return (long) handle("fedlora_emu_htod_bytes", FunctionDescriptor.of(ValueLayout.JAVA_LONG, ValueLayout.JAVA_INT))
                    .invokeExact(asynchronous ? 1 : 0);
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }

    static String lastError() {
        try {
            MemorySegment text = (MemorySegment) handle("fedlora_emu_last_error", FunctionDescriptor.of(ValueLayout.ADDRESS))
                    .invokeExact();
            return text.reinterpret(4096).getString(0);
        } catch (Throwable t) {
            throw new AssertionError(t);
        }
    }
}
