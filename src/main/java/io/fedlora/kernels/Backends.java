package io.fedlora.kernels;

import io.fedlora.kernels.cpu.ScalarKernels;
import java.lang.reflect.InvocationTargetException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.slf4j.event.Level;

/**
 * Picks the kernels backend once per JVM, in the order CUDA, Vector, Scalar (DESIGN §3). The
 * optional backends are loaded by class name, so the core links neither JCuda nor the incubator
 * module; each proves itself in its constructor and throws {@link UnsupportedOperationException}
 * with the reason when it cannot run here, and the lookup moves on. A backend forced with the
 * system property {@code fedlora.backend} or the environment variable {@code FEDLORA_BACKEND}
 * ({@code cuda|vector|scalar|auto}) that cannot run is an error, never a silent fallback.
 */
public final class Backends {
    private static final Logger LOG = LoggerFactory.getLogger(Backends.class);

    public static final String PROPERTY = "fedlora.backend";
    public static final String ENVIRONMENT = "FEDLORA_BACKEND";
    public static final String THREADS_PROPERTY = "fedlora.threads";

    static final String CUDA_CLASS = "io.fedlora.kernels.cuda.CudaKernels";
    static final String VECTOR_CLASS = "io.fedlora.kernels.cpu.VectorKernels";
    static final String VECTOR_MODULE = "jdk.incubator.vector";

    /** The backends in the order {@code auto} tries them. */
    public static final List<String> NAMES = List.of("cuda", "vector", "scalar");

    private Backends() {
    }

    /** What probing one backend found: whether it can run here and, either way, the facts or the reason. */
    public record Probe(String name, boolean available, String detail) {
    }

    private static final class Holder {
        static final Kernels DEFAULT;
        /** Why the configured backend cannot run; remembered so every call reports it, not a class-init error. */
        static final RuntimeException FAILURE;

        static {
            Kernels kernels = null;
            RuntimeException failure = null;
            try {
                kernels = create(configuredName(), defaultThreads(), Level.INFO);
            } catch (RuntimeException e) {
                failure = e;
            }
            DEFAULT = kernels;
            FAILURE = failure;
        }
    }

    /**
     * The process-wide backend, chosen on first use and logged once. Never close it.
     *
     * @throws IllegalStateException if the configured backend cannot run here
     */
    public static Kernels get() {
        if (Holder.FAILURE != null) {
            throw new IllegalStateException(Holder.FAILURE.getMessage(), Holder.FAILURE);
        }
        return Holder.DEFAULT;
    }

    /** The backend name asked for by {@code fedlora.backend}, else {@code FEDLORA_BACKEND}, else "auto". */
    public static String configuredName() {
        String name = System.getProperty(PROPERTY);
        if (name == null || name.isBlank()) {
            name = System.getenv(ENVIRONMENT);
        }
        return name == null || name.isBlank() ? "auto" : name.trim().toLowerCase(Locale.ROOT);
    }

    /** Threads for the CPU backends: {@code fedlora.threads}, else every available core. */
    public static int defaultThreads() {
        String value = System.getProperty(THREADS_PROPERTY);
        if (value == null || value.isBlank()) {
            return Runtime.getRuntime().availableProcessors();
        }
        try {
            int threads = Integer.parseInt(value.trim());
            if (threads >= 1) {
                return threads;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new IllegalArgumentException(THREADS_PROPERTY + " must be a positive integer, got '" + value + "'");
    }

    /**
     * A new backend instance (the caller closes it). {@code auto} takes the first of cuda, vector,
     * scalar that can run and logs why any earlier one was skipped; a named backend that cannot
     * run throws {@link IllegalStateException} with the reason.
     */
    public static Kernels create(String name, int threads) {
        return create(name, threads, Level.DEBUG);
    }

    /** The process backend is logged at INFO, once; backends made for single aggregators at DEBUG. */
    private static Kernels create(String name, int threads, Level level) {
        String wanted = name == null ? "auto" : name.trim().toLowerCase(Locale.ROOT);
        if (wanted.equals("auto")) {
            List<String> skipped = new ArrayList<>();
            for (String candidate : NAMES) {
                try {
                    Kernels kernels = instantiate(candidate, threads);
                    // No GPU is normal; a JVM without the Vector module is worth a warning that says what to do.
                    boolean vectorMissing = skipped.stream().anyMatch(reason -> reason.startsWith("vector"));
                    LOG.atLevel(vectorMissing && level == Level.INFO ? Level.WARN : level)
                            .log("fedlora backend: {} ({}){}", kernels.name(), kernels.description(),
                            skipped.isEmpty() ? "" : "; skipped " + String.join("; ", skipped));
                    return kernels;
                } catch (UnsupportedOperationException e) {
                    skipped.add(candidate + ": " + e.getMessage());
                }
            }
            throw new AssertionError("the scalar backend always runs");
        }
        if (!NAMES.contains(wanted)) {
            throw new IllegalArgumentException("unknown backend '" + name + "'; expected auto, " + String.join(", ", NAMES));
        }
        try {
            Kernels kernels = instantiate(wanted, threads);
            LOG.atLevel(level).log("fedlora backend: {} ({}), as requested", kernels.name(), kernels.description());
            return kernels;
        } catch (UnsupportedOperationException e) {
            throw new IllegalStateException("backend '" + wanted + "' was requested but cannot run here: " + e.getMessage(), e);
        }
    }

    /** Probes every backend (creating and closing each) for {@code fedlora info}. */
    public static List<Probe> probeAll() {
        List<Probe> probes = new ArrayList<>();
        for (String name : NAMES) {
            try (Kernels kernels = instantiate(name, 1)) {
                probes.add(new Probe(name, true, kernels.description()));
            } catch (UnsupportedOperationException e) {
                probes.add(new Probe(name, false, e.getMessage()));
            }
        }
        return probes;
    }

    /** Creates one backend or throws UnsupportedOperationException(reason). */
    static Kernels instantiate(String name, int threads) {
        return switch (name) {
            case "scalar" -> new ScalarKernels(threads);
            case "vector" -> {
                if (ModuleLayer.boot().findModule(VECTOR_MODULE).isEmpty()) {
                    throw new UnsupportedOperationException(VECTOR_MODULE
                            + " is not in the module graph; run java with --add-modules " + VECTOR_MODULE);
                }
                yield load(VECTOR_CLASS, threads);
            }
            case "cuda" -> {
                try {
                    Class.forName("jcuda.driver.JCudaDriver", false, Backends.class.getClassLoader());
                } catch (ClassNotFoundException e) {
                    throw new UnsupportedOperationException("JCuda is not on the class path (org.jcuda:jcuda 12.0.0)");
                }
                yield load(CUDA_CLASS, threads);
            }
            default -> throw new IllegalArgumentException("unknown backend '" + name + "'");
        };
    }

    /**
     * Loads one of our own optional backends by name. A class missing from our own jar is a
     * broken build (LinkageError), not a reason to fall back.
     */
    private static Kernels load(String className, int threads) {
        Class<?> type;
        try {
            type = Class.forName(className, true, Backends.class.getClassLoader());
        } catch (ClassNotFoundException e) {
            throw new LinkageError("fedlora's own class " + className + " is missing from the class path", e);
        }
        try {
            try {
                return (Kernels) type.getConstructor(int.class).newInstance(threads);
            } catch (NoSuchMethodException e) {
                return (Kernels) type.getConstructor().newInstance();
            }
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause();
            if (cause instanceof UnsupportedOperationException unsupported) {
                throw unsupported;
            }
            if (cause instanceof LinkageError linkage) {
                // A native library or class the backend needs is absent on this machine.
                throw new UnsupportedOperationException(linkage.toString(), linkage);
            }
            throw new IllegalStateException("backend " + className + " failed to start: " + cause, cause);
        } catch (ReflectiveOperationException e) {
            throw new LinkageError("cannot construct " + className, e);
        }
    }
}
