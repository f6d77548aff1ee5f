package io.fedlora.cli;

import java.io.PrintStream;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Locale;

/**
 * The progress line of a long run on stderr: clients read, bytes, rate. On a terminal it is
 * redrawn in place; when forced with {@code --progress} onto a file or pipe it prints plain
 * lines, at most two a second, so that logs stay readable.
 */
final class Progress {
    private static final long REDRAW_NANOS = 100_000_000L;
    private static final long LOG_NANOS = 500_000_000L;

    private final PrintStream err;
    private final boolean enabled;
    private final boolean terminal;
    private final int total;
    private final long start = System.nanoTime();
    private long lastPrint;
    private boolean printed;

    private Progress(PrintStream err, boolean enabled, boolean terminal, int total) {
        this.err = err;
        this.enabled = enabled;
        this.terminal = terminal;
        this.total = total;
    }

    /** Shown when forced, or when stderr is the process's stderr and a terminal. */
    static Progress of(PrintStream err, boolean forced, int total) {
        boolean terminal = err == System.err && stderrIsTerminal();
        return new Progress(err, forced || terminal, terminal, total);
    }

    static Progress off() {
        return new Progress(System.err, false, false, 0);
    }

    boolean enabled() {
        return enabled;
    }

    /** Called after each client; {@code bytes} is the running total read. */
    void update(int clientsDone, long bytes) {
        if (!enabled) {
            return;
        }
        long now = System.nanoTime();
        boolean last = clientsDone == total;
        if (!last && now - lastPrint < (terminal ? REDRAW_NANOS : LOG_NANOS)) {
            return;
        }
        lastPrint = now;
        double seconds = Math.max(1e-9, (now - start) / 1e9);
        String line = String.format(Locale.ROOT, "fedlora: read %d/%d clients, %s, %.2f GB/s",
                clientsDone, total, bytes(bytes), bytes / seconds / 1e9);
        if (terminal) {
            err.print("\r" + line + "\033[K");
        } else {
            err.println(line);
        }
        printed = true;
        err.flush();
    }

    /** Ends the line on a terminal; idempotent. */
    void done() {
        if (enabled && terminal && printed) {
            err.println();
            printed = false;
        }
    }

    static String bytes(long bytes) {
        if (bytes >= 1_000_000_000L) {
            return String.format(Locale.ROOT, "%.2f GB", bytes / 1e9);
        }
        return String.format(Locale.ROOT, "%.1f MB", bytes / 1e6);
    }

    /**
     * isatty(2) through the FFM linker when this module may call native code (bin/fedlora
     * enables it); otherwise the JDK's console check, which looks at stdin and stdout instead.
     * Never triggers the JDK's restricted-method warning.
     */
    @SuppressWarnings("restricted") // only called when native access is enabled for this module
    static boolean stderrIsTerminal() {
        if (Progress.class.getModule().isNativeAccessEnabled()) {
            try {
                Linker linker = Linker.nativeLinker();
                MethodHandle isatty = linker.downcallHandle(
                        linker.defaultLookup().find("isatty").orElseThrow(),
                        FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT));
                return (int) isatty.invokeExact(2) == 1;
            } catch (Throwable unavailable) {
                // Not a POSIX libc: fall back to the console check.
            }
        }
        var console = System.console();
        return console != null && console.isTerminal();
    }
}
