package io.fedlora.kernels;

import io.fedlora.kernels.cuda.CudaAutoRule;
import java.lang.reflect.InvocationTargetException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Picks the kernels backend once per JVM and kind of work (DESIGN §3). {@code auto} follows
 * {@link CudaAutoRule}: the work fedlora has today is host-resident (mapped files, heap arrays,
 * numpy memory), so weighted sums (ZERO, REPLICATION, NORM, whose Gram matrices run on the host)
 * try Vector, CUDA, Scalar, and dense algebra (the product-space strategies SVD and STACK) tries
 * CUDA (when cuBLAS loads too), Vector, Scalar. The optional backends are loaded by class name,
 * so the core links neither JCuda nor the incubator module ({@code CudaAutoRule} is plain Java);
 * each proves itself in its constructor and throws {@link UnsupportedOperationException} with the
 * reason when it cannot run here, and the lookup moves on. A backend forced with the system
 * property {@code fedlora.backend} or the environment variable {@code FEDLORA_BACKEND}
 * ({@code cuda|vector|scalar|auto}) is used for every kind of work; one that cannot run is an
 * error, never a silent fallback.
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

    /** The backends, in the order {@code auto} tries them for dense algebra (for weighted sums: vector, cuda, scalar). */
    public static final List<String> NAMES = List.of("cuda", "vector", "scalar");

    private Backends() {
    }

    /** What probing one backend found: whether it can run here and, either way, the facts or the reason. */
    public record Probe(String name, boolean available, String detail) {
    }

    /**
     * What a process-wide backend is and why: the chosen backend and its facts, the backends
     * {@code auto} skipped with the reason for each (a backend that runs but that the rule did not
     * pick is listed as available), a warning when the choice is below the best this machine
     * could run (null otherwise), so that a server can log or assert it, and the rule {@code auto}
     * follows ({@link CudaAutoRule#summary()}).
     */
    public record Report(String chosen, String description, List<Probe> skipped, String warning, String autoRule) {
        public Report {
            skipped = List.copyOf(skipped);
        }
    }

    /** One process-wide choice: the backend, or why the configured one cannot run (remembered, not a class-init error). */
    private record Choice(Kernels kernels, Report report, RuntimeException failure) {
        static Choice make(boolean denseAlgebra) {
            try {
                List<Probe> skipped = new ArrayList<>();
                Kernels kernels = choose(configuredName(), defaultThreads(), denseAlgebra, skipped, Backends::shared);
                Report report = new Report(kernels.name(), kernels.description(), skipped, degradation(kernels, skipped),
                        CudaAutoRule.summary());
                Log.chosen(report, denseAlgebra ? "dense algebra (SVD, STACK)" : "weighted sums");
                return new Choice(kernels, report, null);
            } catch (RuntimeException e) {
                return new Choice(null, null, e);
            }
        }

        Kernels get() {
            if (failure != null) {
                throw new IllegalStateException(failure.getMessage(), failure);
            }
            return kernels;
        }
    }

    private static final class Sums {
        static final Choice CHOICE = Choice.make(false);
    }

    private static final class Dense {
        static final Choice CHOICE = Choice.make(true);
    }

    /** The process-wide instances by name: the two kinds of work share one when they choose the same backend. */
    private static final Map<String, Kernels> SHARED = new HashMap<>();

    private static Kernels shared(String name, int threads) {
        synchronized (SHARED) {
            Kernels kernels = SHARED.get(name);
            if (kernels == null) {
                kernels = instantiate(name, threads);
                SHARED.put(name, kernels);
            }
            return kernels;
        }
    }

    /**
     * The process-wide backend for weighted sums of host-resident data (ZERO, REPLICATION, NORM,
     * truncation), chosen on first use and reported once (see {@link #report()}). Never close it.
     *
     * @throws IllegalStateException if the configured backend cannot run here
     */
    public static Kernels get() {
        return get(false);
    }

    /**
     * The process-wide backend for this kind of work: {@code denseAlgebra} for the product-space
     * strategies (SVD, STACK: Gram matrices and back-projections, compute-bound), else weighted
     * sums. Under {@code auto} the two may differ ({@link CudaAutoRule}); a forced backend serves
     * both. Never close it.
     *
     * @throws IllegalStateException if the configured backend cannot run here
     */
    public static Kernels get(boolean denseAlgebra) {
        return (denseAlgebra ? Dense.CHOICE : Sums.CHOICE).get();
    }

    /** How the process-wide backend for weighted sums was chosen. */
    public static Report report() {
        return report(false);
    }

    /** How the process-wide backend for this kind of work was chosen (see {@link #get(boolean)}). */
    public static Report report(boolean denseAlgebra) {
        get(denseAlgebra);
        return (denseAlgebra ? Dense.CHOICE : Sums.CHOICE).report();
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
     * A new backend instance for weighted sums (the caller closes it): {@code create(name, threads, false)}.
     */
    public static Kernels create(String name, int threads) {
        return create(name, threads, false);
    }

    /**
     * A new backend instance for this kind of work (the caller closes it). {@code auto} follows
     * {@link CudaAutoRule}: for weighted sums the first of vector, cuda, scalar that can run; for
     * dense algebra the first of cuda (with cuBLAS), vector, scalar. A named backend that cannot
     * run throws {@link IllegalStateException} with the reason.
     */
    public static Kernels create(String name, int threads, boolean denseAlgebra) {
        return choose(name, threads, denseAlgebra, new ArrayList<>(), Backends::instantiate);
    }

    private interface Maker {
        Kernels make(String name, int threads);
    }

    private static Kernels choose(String name, int threads, boolean denseAlgebra, List<Probe> skipped, Maker maker) {
        String wanted = name == null ? "auto" : name.trim().toLowerCase(Locale.ROOT);
        if (wanted.equals("auto")) {
            // Every input is host-resident today; the rule decides by the kind of work.
            return CudaAutoRule.prefersCuda(CudaAutoRule.Residence.HOST, denseAlgebra)
                    ? autoPreferringCuda(threads, skipped, maker) : autoPreferringVector(threads, skipped, maker);
        }
        if (!NAMES.contains(wanted)) {
            throw new IllegalArgumentException("unknown backend '" + name + "'; expected auto, " + String.join(", ", NAMES));
        }
        try {
            return maker.make(wanted, threads);
        } catch (UnsupportedOperationException e) {
            throw new IllegalStateException("backend '" + wanted + "' was requested but cannot run here: " + e.getMessage(), e);
        }
    }

    /**
     * Work the rule keeps off CUDA (host-resident weighted sums): vector, which CUDA cannot beat
     * through PCIe; CUDA only when the Vector API is missing (the scalar loops are slower than
     * the staging path); scalar last. CUDA is probed (driver and device, no context) so that the
     * report says whether it could run.
     */
    private static Kernels autoPreferringVector(int threads, List<Probe> skipped, Maker maker) {
        try {
            Kernels vector = maker.make("vector", threads);
            String cause = cudaCause();
            skipped.add(cause != null ? new Probe("cuda", false, cause) : new Probe("cuda", true,
                    "runs here, but auto keeps host-resident weighted sums on the vector backend (CudaAutoRule)"));
            return vector;
        } catch (UnsupportedOperationException e) {
            skipped.add(new Probe("vector", false, e.getMessage()));
        }
        return firstOf(List.of("cuda", "scalar"), threads, skipped, maker);
    }

    /** Work the rule sends to CUDA (dense algebra: SVD, STACK): CUDA when its driver, device and cuBLAS load, else vector. */
    private static Kernels autoPreferringCuda(int threads, List<Probe> skipped, Maker maker) {
        String cause = cudaDenseAlgebraCause();
        if (cause == null) {
            return firstOf(NAMES, threads, skipped, maker);
        }
        skipped.add(new Probe("cuda", false, cause));
        return firstOf(List.of("vector", "scalar"), threads, skipped, maker);
    }

    private static Kernels firstOf(List<String> names, int threads, List<Probe> skipped, Maker maker) {
        for (String candidate : names) {
            try {
                return maker.make(candidate, threads);
            } catch (UnsupportedOperationException e) {
                skipped.add(new Probe(candidate, false, e.getMessage()));
            }
        }
        throw new AssertionError("the scalar backend always runs");
    }

    /** Null when the CUDA driver runs and reports a device (CudaKernels' one probe; no context), else why not. */
    private static String cudaCause() {
        return cudaStatic("unavailabilityCause");
    }

    /** Null when the CUDA driver, a device and cuBLAS (libcublas.so.12) all load here, else why not. */
    private static String cudaDenseAlgebraCause() {
        String cause = cudaStatic("denseAlgebraUnavailabilityCause");
        return cause == null || cudaCause() != null ? cause : "the dense algebra needs cuBLAS, which did not load: " + cause;
    }

    private static String cudaStatic(String method) {
        try {
            Class.forName("jcuda.driver.JCudaDriver", false, Backends.class.getClassLoader());
        } catch (ClassNotFoundException e) {
            return NO_JCUDA + " (org.jcuda:jcuda 12.0.0)";
        }
        try {
            return (String) Class.forName(CUDA_CLASS, true, Backends.class.getClassLoader()).getMethod(method).invoke(null);
        } catch (InvocationTargetException e) { // the probes catch everything; a LinkageError of loading JCuda itself
            return String.valueOf(e.getCause()).lines().findFirst().orElse("");
        } catch (ReflectiveOperationException e) {
            throw new LinkageError("fedlora's own class " + CUDA_CLASS + " lacks " + method, e);
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
            // A CUDA that runs but that the rule did not pick (host-resident sums) is no degradation.
            if (p.name().equals("cuda") && !p.available() && !p.detail().startsWith(NO_JCUDA)) {
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
