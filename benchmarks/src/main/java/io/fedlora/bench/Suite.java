package io.fedlora.bench;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.ZonedDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.results.format.ResultFormatFactory;
import org.openjdk.jmh.results.format.ResultFormatType;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;
import org.openjdk.jmh.runner.options.ChainedOptionsBuilder;
import org.openjdk.jmh.runner.options.OptionsBuilder;
import org.openjdk.jmh.runner.options.TimeValue;

/**
 * Runs a named plan of JMH runs (each its own slice of the parameter grid, since one JMH run can
 * only take a full cross product) and writes all results to one JSON file, plus an env.txt
 * beside it with the date, CPU and JVM. Plans: full (the committed results, ~20 minutes on 2
 * cores), issue2 (the lead's configuration and the triad only), issue8 (batch and streaming
 * REPLICATION rounds of 16 clients on both Llama modules, ranks 8..64 and {8, 16, 32, 64}, between
 * two triads), issue11 (product space: the FMA peak, SVD / Grams / fidelity of 16 and 100 Llama-shaped
 * clients, the dense alternative at 16), smoke (CI: every benchmark once, smallest shapes; fails when one did not produce a
 * score).
 *
 * <p>Usage: {@code Suite full|issue2|issue8|issue11|smoke OUTPUT.json}
 */
public final class Suite {
    private Suite() {
    }

    /**
     * A slice of the grid: which benchmarks, and the parameter values that replace the defaults;
     * {@code singleShot} measures one call (no warm-up), for operations that take minutes.
     */
    record Slice(String include, Map<String, String[]> params, boolean singleShot) {
        Slice(String include, Map<String, String[]> params) {
            this(include, params, false);
        }
    }

    static final Class<?>[] BENCHMARKS = {AggregateBench.class, PadBench.class, TriadBench.class, KernelBench.class,
            ProductBench.class, FlopsBench.class};

    public static void main(String[] args) throws RunnerException, IOException {
        if (args.length != 2) {
            System.err.println("usage: Suite full|issue2|issue8|issue11|smoke OUTPUT.json");
            System.exit(2);
        }
        String plan = args[0];
        Path output = Path.of(args[1]).toAbsolutePath();
        Files.createDirectories(output.getParent());
        List<Slice> slices = slices(plan);
        boolean smoke = plan.equals("smoke");
        List<RunResult> results = new ArrayList<>();
        long started = System.nanoTime();
        for (Slice slice : slices) {
            ChainedOptionsBuilder options = new OptionsBuilder().include(slice.include()).forks(1).shouldFailOnError(true);
            if (slice.singleShot()) {
                // The K = 100 SVD takes 5-15 minutes here, past JMH's default 10-minute timeout.
                options.mode(Mode.SingleShotTime).warmupIterations(0).measurementIterations(1).timeout(TimeValue.minutes(45));
            } else if (smoke) {
                options.warmupIterations(1).warmupTime(TimeValue.milliseconds(20))
                        .measurementIterations(1).measurementTime(TimeValue.milliseconds(50));
            } else if (plan.equals("issue2") || plan.equals("issue8")) {
                // Steady state, as a long-running server sees it: C2 has compiled the Vector API
                // loops (that takes seconds of warm-up here, not 0.4 s), and the heap's pages
                // have been touched once (a first touch costs ~13 us a page on this VM).
                options.warmupIterations(10).warmupTime(TimeValue.milliseconds(400))
                        .measurementIterations(10).measurementTime(TimeValue.milliseconds(300))
                        .jvmArgsAppend("-XX:+AlwaysPreTouch");
            }
            slice.params().forEach(options::param);
            results.addAll(new Runner(options.build()).run());
        }
        long seconds = TimeUnit.NANOSECONDS.toSeconds(System.nanoTime() - started);
        ResultFormatFactory.getInstance(ResultFormatType.JSON, output.toString()).writeOut(results);
        Files.writeString(output.resolveSibling("env.txt"), environment(plan, seconds), StandardCharsets.UTF_8);
        System.out.println("fedlora-bench: " + results.size() + " results in " + seconds + " s -> " + output);
        if (smoke) {
            checkEveryBenchmarkRan(results);
        }
    }

    static List<Slice> slices(String plan) {
        String aggregate = "\\.AggregateBench\\.", pad = "\\.PadBench\\.", triad = "\\.TriadBench\\.",
                kernel = "\\.KernelBench\\.", product = "\\.ProductBench\\.", flops = "\\.FlopsBench\\.";
        Slice issue2 = new Slice(aggregate, params("shape", "llama7b", "clients", "16", "mix", "uniform",
                "strategy", "replication", "backend", "scalar,vector"));
        Slice triadSlice = new Slice(triad, Map.of());
        // Issue 8: batch and streaming only (pad-then-average is issue 2's question), both rank mixes.
        Slice issue8 = new Slice(aggregate + "(fused|streaming)$", params("shape", "llama7b", "clients", "16",
                "mix", "uniform,pow2", "strategy", "replication", "backend", "vector,scalar"));
        return switch (plan) {
            case "full" -> List.of(
                    triadSlice,
                    issue2,
                    new Slice(pad, Map.of()),
                    new Slice(kernel, Map.of()),
                    new Slice(aggregate, params("mix", "uniform")),
                    new Slice(aggregate, params("mix", "paper", "shape", "distilbert,llama-mlp",
                            "clients", "10,100", "backend", "vector")),
                    // Measured again at the end: the two triads bracket the run and show its drift.
                    triadSlice);
            case "issue2" -> List.of(triadSlice, issue2, triadSlice);
            case "issue8" -> List.of(triadSlice, issue8, triadSlice);
            // Issue 11: the FMA peak the GFLOP/s are a share of, 16 Llama-shaped clients (ranks
            // 8..64) on both modules, then K = 100 on the MLP module, one call each (minutes).
            case "issue11" -> List.of(new Slice(flops, Map.of()),
                    new Slice(product + "(grams|svd|svdAfterGrams|fidelity)$", params("shape", "llama-attn,llama-mlp",
                            "clients", "16", "backend", "vector")),
                    // The dense alternative (m x n average, then a thin SVD): minutes a call.
                    new Slice(product + "denseAlternative$", params("shape", "llama-attn,llama-mlp", "clients", "16",
                            "backend", "vector"), true),
                    new Slice(product + "(grams|svdAfterGrams|fidelity)$", params("shape", "llama-mlp", "clients", "100",
                            "backend", "vector"), true),
                    new Slice(flops, Map.of()));
            case "smoke" -> List.of(
                    new Slice(product, params("shape", "distilbert", "clients", "2")),
                    new Slice(flops, Map.of()),
                    new Slice(aggregate, params("shape", "distilbert", "clients", "2", "mix", "paper")),
                    new Slice(pad, params("shape", "distilbert")),
                    new Slice(kernel, params("shape", "distilbert", "clients", "2")),
                    new Slice(triad, params("elements", "1048576")));
            default -> throw new IllegalArgumentException("unknown plan '" + plan + "'; expected full, issue2, issue8, issue11 or smoke");
        };
    }

    /** name, "v1,v2", name, ... -> the map JMH's param() takes. */
    private static Map<String, String[]> params(String... pairs) {
        Map<String, String[]> map = new LinkedHashMap<>();
        for (int i = 0; i < pairs.length; i += 2) {
            map.put(pairs[i], pairs[i + 1].split(","));
        }
        return map;
    }

    /** The smoke check: every @Benchmark method of every class produced a positive, finite score. */
    static void checkEveryBenchmarkRan(List<RunResult> results) {
        Set<String> scored = new HashSet<>();
        for (RunResult r : results) {
            double score = r.getPrimaryResult().getScore();
            if (Double.isFinite(score) && score > 0) {
                scored.add(r.getParams().getBenchmark());
            }
        }
        List<String> missing = new ArrayList<>();
        for (Class<?> type : BENCHMARKS) {
            for (Method method : type.getDeclaredMethods()) {
                String name = type.getName() + "." + method.getName();
                if (method.isAnnotationPresent(Benchmark.class) && !scored.contains(name)) {
                    missing.add(name);
                }
            }
        }
        if (!missing.isEmpty()) {
            System.err.println("fedlora-bench smoke: no score for " + missing);
            System.exit(1);
        }
        System.out.println("fedlora-bench smoke: every benchmark ran (" + scored.size() + " methods)");
    }

    static String environment(String plan, long seconds) {
        Runtime rt = Runtime.getRuntime();
        return "date: " + ZonedDateTime.now(ZoneOffset.UTC).withNano(0) + "\n"
                + "plan: " + plan + " (" + seconds + " s)\n"
                + "cpu: " + cpuModel() + "\n"
                + "cores: " + rt.availableProcessors() + "\n"
                + "memory: " + memory() + "\n"
                + "os: " + System.getProperty("os.name") + " " + System.getProperty("os.version") + " "
                + System.getProperty("os.arch") + "\n"
                + "jvm: " + System.getProperty("java.vm.name") + " " + System.getProperty("java.runtime.version")
                + " (" + System.getProperty("java.vm.vendor") + ")\n";
    }

    /** lscpu's "Model name", else /proc/cpuinfo's "model name", else "unknown". */
    static String cpuModel() {
        try {
            Process p = new ProcessBuilder("lscpu").redirectErrorStream(true).start();
            String text = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            p.waitFor();
            for (String line : text.split("\n")) {
                if (line.startsWith("Model name:")) {
                    return line.substring("Model name:".length()).trim() + " (lscpu)";
                }
            }
        } catch (IOException | InterruptedException e) {
            // fall through to /proc/cpuinfo
        }
        try {
            for (String line : Files.readAllLines(Path.of("/proc/cpuinfo"))) {
                if (line.startsWith("model name")) {
                    return line.substring(line.indexOf(':') + 1).trim();
                }
            }
        } catch (IOException | UncheckedIOException e) {
            // unknown
        }
        return "unknown";
    }

    static String memory() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/meminfo"))) {
                if (line.startsWith("MemTotal:")) {
                    long kb = Long.parseLong(line.replaceAll("[^0-9]", ""));
                    return String.format("%.1f GiB", kb / 1024.0 / 1024.0);
                }
            }
        } catch (IOException | RuntimeException e) {
            // unknown
        }
        return "unknown";
    }
}
