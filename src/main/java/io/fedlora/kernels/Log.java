package io.fedlora.kernels;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * fedlora's few log lines, through SLF4J when the application has a logging provider, and
 * otherwise, for warnings only, once each on stderr (a library user with no provider would
 * never hear that fedlora fell back to a slower backend). Only calls that slf4j-api 1.7 and 2.x
 * both have are made, and a failure of logging itself never reaches the caller.
 * {@code -Dfedlora.quiet=true} (or {@code FEDLORA_QUIET=1}) silences the stderr line.
 */
public final class Log {
    public static final String QUIET_PROPERTY = "fedlora.quiet";
    public static final String QUIET_ENVIRONMENT = "FEDLORA_QUIET";

    private static final Set<String> PRINTED = ConcurrentHashMap.newKeySet();

    private Log() {
    }

    private static final class Provider {
        /** Decided once, before SLF4J is first touched, so that a missing provider costs no SLF4J warning of its own. */
        static final boolean PRESENT = providerPresent();
    }

    static boolean providerPresent() {
        ClassLoader loader = Log.class.getClassLoader();
        try {
            // slf4j 2.x finds its provider through the ServiceLoader.
            Class<?> spi = Class.forName("org.slf4j.spi.SLF4JServiceProvider", false, loader);
            if (java.util.ServiceLoader.load(spi, loader).findFirst().isPresent()) {
                return true;
            }
        } catch (Throwable e) {
            // not slf4j 2, or no ServiceLoader access: try the 1.7 binding
        }
        try {
            Class.forName("org.slf4j.impl.StaticLoggerBinder", false, loader);
            return true;
        } catch (Throwable e) {
            return false;
        }
    }

    /** True when {@code fedlora.quiet} or {@code FEDLORA_QUIET} asks for no stderr lines. */
    public static boolean quiet() {
        String p = System.getProperty(QUIET_PROPERTY);
        String e = System.getenv(QUIET_ENVIRONMENT);
        return p != null ? !p.equalsIgnoreCase("false") && !p.equals("0") : e != null && !e.isEmpty() && !e.equals("0");
    }

    public static void info(Class<?> source, String message) {
        if (Provider.PRESENT) {
            try {
                org.slf4j.LoggerFactory.getLogger(source).info(message);
            } catch (Throwable e) {
                // logging must never break the caller
            }
        }
    }

    public static void debug(Class<?> source, String message) {
        if (Provider.PRESENT) {
            try {
                org.slf4j.LoggerFactory.getLogger(source).debug(message);
            } catch (Throwable e) {
                // logging must never break the caller
            }
        }
    }

    /** A warning: through SLF4J, or once on stderr when there is no provider (or SLF4J fails). */
    public static void warn(Class<?> source, String message) {
        if (Provider.PRESENT) {
            try {
                org.slf4j.LoggerFactory.getLogger(source).warn(message);
                return;
            } catch (Throwable e) {
                // fall through to stderr
            }
        }
        if (!quiet() && PRINTED.add(message)) {
            System.err.println("fedlora: WARNING: " + message + " (silence with -D" + QUIET_PROPERTY + "=true or "
                    + QUIET_ENVIRONMENT + "=1)");
        }
    }

    /** A process backend's choice for one kind of work: its facts at INFO, and a warning when it is below the best. */
    static void chosen(Backends.Report report, String work) {
        StringBuilder line = new StringBuilder("fedlora backend: " + report.chosen() + " (" + report.description() + ") for "
                + work);
        if (!report.skipped().isEmpty()) {
            line.append("; skipped");
            for (Backends.Probe p : report.skipped()) {
                line.append(' ').append(p.name()).append(": ").append(p.detail()).append(';');
            }
            line.setLength(line.length() - 1);
        }
        info(Backends.class, line.toString());
        if (report.warning() != null) {
            warn(Backends.class, report.warning());
        }
    }
}
