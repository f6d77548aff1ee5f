package io.fedlora.kernels;

import java.lang.reflect.InvocationTargetException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * Picks the kernels backend once per JVM, in the order CUDA, Vector, Scalar (DESIGN §3). The
 * optional backends are loaded by class name, so the core links neither JCuda nor the incubator
 * module; each proves itself in its constructor and throws {@link UnsupportedOperationException}
 * with the reason when it cannot run here, and the lookup moves on. A backend forced with the
 * system property {@code fedlora.backend} or the environment variable {@code FEDLORA_BACKEND}
 * ({@code cuda|vector|scalar|auto}) that cannot run is an error, never a silent fallback.
 */
public final class Backends {
    public static final String PROPERTY = "fedlora.backend";
    public static final String ENVIRONMENT = "FEDLORA_BACKEND";
    public static final String THREADS_PROPERTY = "fedlora.threads";

    static final String CUDA_CLASS = "io.fedlora.kernels.cuda.CudaKernels";
    // Every backend is loaded by name, so that the SPI package does not depend on its implementations.
    static final String SCALAR_CLASS = "io.fedlora.kernels.cpu.ScalarKernels";
    static final String VECTOR_CLASS = "io.fedlora.kernels.cpu.VectorKernels";
    static final String VECTOR_MODULE = "jdk.incubator.vector";

    /** The backends in the order {@code auto} tries them. */
    public static final List<String> NAMES = List.of("cuda", "vector", "scalar");

    private Backends() {
    }

    /** What probing one backend found: whether it can run here and, either way, the facts or the reason. */
    public record Probe(String name, boolean available, String detail) {
    }

    /**
     * What the process-wide backend is and why: the chosen backend and its facts, the backends
     * {@code auto} skipped with the reason for each, and a warning when the choice is below the
     * best this machine could run (null otherwise), so that a server can log or assert it.
     */
    public record Report(String chosen, String description, List<Probe> skipped, String warning) {
        public Report {
            skipped = List.copyOf(skipped);
        }
    }

    private static final class Holder {
        static final Kernels DEFAULT;
        static final Report REPORT;
        /** Why the configured backend cannot run; remembered so every call reports it, not a class-init error. */
        static final RuntimeException FAILURE;

        static {
            Kernels kernels = null;
            Report report = null;
            RuntimeException failure = null;
            try {
                List<Probe> skipped = new ArrayList<>();
                kernels = create(configuredName(), defaultThreads(), skipped);
                String warning = degradation(kernels, skipped);
                report = new Report(kernels.name(), kernels.description(), skipped, warning);
                Log.chosen(report);
            } catch (RuntimeException e) {
                failure = e;
            }
            DEFAULT = kernels;
            REPORT = report;
            FAILURE = failure;
        }
    }

    /**
     * The process-wide backend, chosen on first use and reported once (see {@link #report()}). Never close it.
     *
     * @throws IllegalStateException if the configured backend cannot run here
     */
    public static Kernels get() {
        if (Holder.FAILURE != null) {
            throw new IllegalStateException(Holder.FAILURE.getMessage(), Holder.FAILURE);
        }
        return Holder.DEFAULT;
    }

    /** How the process-wide backend was chosen. */
    public static Report report() {
        get();
        return Holder.REPORT;
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
     * scalar that can run; a named backend that cannot run throws {@link IllegalStateException}
     * with the reason.
     */
    public static Kernels create(String name, int threads) {
        return create(name, threads, new ArrayList<>());
    }

    private static Kernels create(String name, int threads, List<Probe> skipped) {
        String wanted = name == null ? "auto" : name.trim().toLowerCase(Locale.ROOT);
        if (wanted.equals("auto")) {
            for (String candidate : NAMES) {
                try {
                    return instantiate(candidate, threads);
                } catch (UnsupportedOperationException e) {
                    skipped.add(new Probe(candidate, false, e.getMessage()));
                }
            }
            throw new AssertionError("the scalar backend always runs");
        }
        if (!NAMES.contains(wanted)) {
            throw new IllegalArgumentException("unknown backend '" + name + "'; expected auto, " + String.join(", ", NAMES));
        }
        try {
            return instantiate(wanted, threads);
        } catch (UnsupportedOperationException e) {
            throw new IllegalStateException("backend '" + wanted + "' was requested but cannot run here: " + e.getMessage(), e);
        }
    }

    /**
     * Why {@code chosen} is below what this machine could run, or null: the Vector API left out
     * of the module graph (the scalar loops are several times slower), or JCuda present without
     * a usable CUDA driver. No GPU and no JCuda is the normal CPU case and says nothing.
     */
    static String degradation(Kernels chosen, List<Probe> skipped) {
        for (Probe p : skipped) {
            if (p.name().equals("vector") && chosen.name().equals("scalar")) {
                return "fedlora runs the scalar backend: " + p.detail();
            }
        }
        for (Probe p : skipped) {
            if (p.name().equals("cuda") && !p.detail().startsWith(NO_JCUDA)) {
                return "fedlora runs the " + chosen.name() + " backend, not cuda: " + p.detail();
            }
        }
        return null;
    }

    static final String NO_JCUDA = "JCuda is not on the class path";

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
            case "scalar" -> load(SCALAR_CLASS, threads);
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
                    throw new UnsupportedOperationException(NO_JCUDA + " (org.jcuda:jcuda 12.0.0)");
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
