package io.fedlora.bench;

import io.fedlora.kernels.Backends;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.TreeSet;
import java.util.function.Predicate;

/**
 * Turns JMH's JSON ({@code -rf json}, or Suite's output) into a Markdown report on stdout and an
 * SVG chart (hand-written SVG, no plotting library) beside the JSON, or at the second argument.
 * Reads env.txt beside the JSON when present (Suite writes it).
 *
 * <p>Usage: {@code Report RESULTS.json [CHART.svg] > report.md}
 */
public final class Report {
    private Report() {
    }

    /** One JMH result: which benchmark, its parameters, and the time per op in milliseconds. */
    record Result(String type, String method, Map<String, String> params, double ms, double errorMs, int samples) {
        String p(String name) {
            return params.getOrDefault(name, "");
        }

        int clients() {
            return Integer.parseInt(p("clients"));
        }

        /** Bytes an op moves by the report's definition; see the Definitions section. */
        long bytes() {
            return switch (type) {
                case "AggregateBench" -> Workload.bytesMoved(p("shape"), p("mix"), clients());
                case "PadBench" -> PadBench.bytesMoved(method, p("shape"), Integer.parseInt(p("rank")),
                        Integer.parseInt(p("globalRank")));
                case "TriadBench" -> TriadBench.bytesMoved(Integer.parseInt(p("elements")));
                case "KernelBench" -> KernelBench.bytesMoved(method, p("shape"), p("mix"), clients());
                default -> 0;
            };
        }

        double gbps() {
            return bytes() / (ms * 1e-3) / 1e9;
        }

        double gbpsError() {
            return Double.isFinite(errorMs) ? gbps() * errorMs / ms : Double.NaN;
        }
    }

    static final String[] PATHS = {"padThenAverage", "fused", "streaming"};
    static final String[] SHAPES = {"distilbert", "llama-attn", "llama-mlp", "llama7b"};
    static final String[] STRATEGIES = {"zero", "replication", "norm"};

    public static void main(String[] args) throws IOException {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: Report RESULTS.json [CHART.svg] > report.md");
            System.exit(2);
        }
        Path json = Path.of(args[0]).toAbsolutePath();
        Path svg = args.length > 1 ? Path.of(args[1]) : json.resolveSibling("chart.svg");
        List<Result> results = read(json);
        Path env = json.resolveSibling("env.txt");
        String envText = Files.exists(env) ? Files.readString(env) : null;
        JsonNode first = new ObjectMapper().readTree(json.toFile()).path(0);
        Files.writeString(svg, new Report.Chart(results).svg(), StandardCharsets.UTF_8);
        Path peersFile = json.resolveSibling("peers.jsonl");
        List<JsonNode> peers = new ArrayList<>();
        if (Files.exists(peersFile)) {
            for (String line : Files.readAllLines(peersFile)) {
                if (!line.isBlank()) {
                    peers.add(new ObjectMapper().readTree(line));
                }
            }
        }
        System.out.print(markdown(results, envText, first, svg.getFileName().toString(), peers));
    }

    static List<Result> read(Path json) throws IOException {
        List<Result> out = new ArrayList<>();
        for (JsonNode node : new ObjectMapper().readTree(json.toFile())) {
            String name = node.path("benchmark").asText();
            String[] parts = name.split("\\.");
            Map<String, String> params = new LinkedHashMap<>();
            node.path("params").properties().forEach(e -> params.put(e.getKey(), e.getValue().asText()));
            JsonNode metric = node.path("primaryMetric");
            double toMs = switch (metric.path("scoreUnit").asText()) {
                case "s/op" -> 1e3;
                case "ms/op" -> 1;
                case "us/op" -> 1e-3;
                case "ns/op" -> 1e-6;
                default -> throw new IllegalArgumentException(name + ": report needs an average-time unit, got "
                        + metric.path("scoreUnit").asText());
            };
            double error = metric.path("scoreError").asDouble(Double.NaN);
            int samples = 0;
            for (JsonNode fork : metric.path("rawData")) {
                samples += fork.size();
            }
            out.add(new Result(parts[parts.length - 2], parts[parts.length - 1], params,
                    metric.path("score").asDouble() * toMs, error * toMs, samples));
        }
        return out;
    }

    // ---- Markdown ------------------------------------------------------------------------------

    static String markdown(List<Result> results, String env, JsonNode first, String chartName) {
        return markdown(results, env, first, chartName, List.of());
    }

    static String markdown(List<Result> results, String env, JsonNode first, String chartName, List<JsonNode> peers) {
        StringBuilder md = new StringBuilder();
        md.append("# fedlora aggregation benchmarks\n\n");
        if (env != null) {
            for (String line : env.strip().split("\n")) {
                md.append("- ").append(line).append('\n');
            }
        }
        if (!first.isMissingNode()) {
            md.append("- JMH ").append(first.path("jmhVersion").asText()).append(", ")
                    .append(first.path("forks").asInt()).append(" fork, warm-up ")
                    .append(first.path("warmupIterations").asInt()).append(" x ").append(first.path("warmupTime").asText())
                    .append(", measurement ").append(first.path("measurementIterations").asInt()).append(" x ")
                    .append(first.path("measurementTime").asText()).append(", fork JVM args ")
                    .append(first.path("jvmArgs")).append('\n');
        }
        List<Result> triads = select(results, r -> r.type().equals("TriadBench"));
        double triad = triads.stream().mapToDouble(Result::gbps).average().orElse(Double.NaN);
        md.append("""

                ## Definitions

                - **time**: JMH average time per operation; **±** is JMH's 99.9% confidence half-width
                  (blank with a single measurement iteration). One op aggregates one whole round (every
                  module), or pads one client's A and B, or runs one triad pass.
                - **GB/s** (aggregation) = (bytes of all clients' factors read + bytes of the global adapter
                  written) / time, float32, global rank = largest client rank; 1 GB = 10^9 bytes. This is
                  the least traffic any method needs, so every path of one configuration is divided by the
                  same number, and pad-then-average's extra traffic shows up as a lower GB/s.
                - **GB/s** (padding ops) = (bytes read + bytes written) / time: padZero reads the client's
                  factors and writes the padded ones; padReplicate also reads the donor's rows; arraycopy
                  reads and writes the padded size.
                - **triad**: STREAM-style `a[i] = b[i] + s*c[i]` on all cores, 3 x 128 MiB float arrays,
                  counted as 3 x 4 bytes per element. **% triad** = GB/s / triad GB/s (mean of the triad
                  runs below), the share of this machine's usable memory bandwidth.
                - **pad-then-average**: every client padded to the global rank with the library's
                  `Aggregator.padZero`/`padReplicate` (REPLICATION: zero-pad, owner-weighted donor, pad
                  again from the donor, as the paper describes), then the backend's weighted mean of the
                  equal-shaped factors. **fused**: `Aggregator.aggregate` (batch). **streaming**:
                  `Round.add` per client, then `finish`. **speed-up** = pad-then-average time / path time.
                - Backends run on all cores. A `cuda` row would be the CUDA backend under the device
                  emulator: emulated timings say nothing about GPU speed.

                """);
        md.append("## Memory bandwidth (triad)\n\n| run | time (ms) | GB/s |\n|---|---:|---:|\n");
        for (int i = 0; i < triads.size(); i++) {
            Result t = triads.get(i);
            md.append("| ").append(i + 1).append(" | ").append(time(t)).append(" | ").append(rate(t)).append(" |\n");
        }
        md.append("\nTriad reference: **").append(f1(triad)).append(" GB/s**");
        if (triads.size() > 1) {
            double lo = triads.stream().mapToDouble(Result::gbps).min().orElseThrow();
            double hi = triads.stream().mapToDouble(Result::gbps).max().orElseThrow();
            md.append(" (runs ").append(f1(lo)).append("–").append(f1(hi)).append(" GB/s: the machine's drift over the run)");
        }
        md.append(".\n\n");

        List<Result> aggregate = select(results, r -> r.type().equals("AggregateBench"));
        issue8(md, aggregate, triad, peers);
        issue2(md, aggregate, triad);
        targets(md, aggregate, triad);
        md.append("## Aggregation\n\n![GB/s against K](").append(chartName).append(")\n\n");
        for (String mix : List.of("uniform", "paper")) {
            for (String shape : SHAPES) {
                List<Result> slice = select(aggregate, r -> r.p("mix").equals(mix) && r.p("shape").equals(shape)
                        && !(shape.equals("llama7b") && r.clients() == 16));
                if (slice.isEmpty()) {
                    continue;
                }
                md.append("### ").append(shapeTitle(shape)).append(", ranks ").append(mixTitle(mix)).append("\n\n");
                md.append("| K | strategy | backend | pad-then-average (ms) | fused (ms) | streaming (ms) "
                        + "| fused GB/s | fused % triad | streaming GB/s | streaming % triad | fused speed-up | streaming speed-up |\n");
                md.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
                for (Map<String, String> key : configurations(slice)) {
                    Result pad = find(slice, key, "padThenAverage"), fused = find(slice, key, "fused"),
                            streaming = find(slice, key, "streaming");
                    md.append("| ").append(key.get("clients")).append(" | ").append(key.get("strategy")).append(" | ")
                            .append(backendLabel(key.get("backend"))).append(" | ").append(time(pad)).append(" | ")
                            .append(time(fused)).append(" | ").append(time(streaming)).append(" | ").append(rate(fused))
                            .append(" | ").append(share(fused, triad)).append(" | ").append(rate(streaming)).append(" | ")
                            .append(share(streaming, triad)).append(" | ").append(speedUp(pad, fused)).append(" | ")
                            .append(speedUp(pad, streaming)).append(" |\n");
                }
                md.append('\n');
            }
        }
        vectorOverScalar(md, aggregate);
        padding(md, select(results, r -> r.type().equals("PadBench")));
        kernels(md, select(results, r -> r.type().equals("KernelBench")), triad);
        product(md, select(results, r -> r.type().equals("ProductBench")), select(results, r -> r.type().equals("FlopsBench")));
        return md.toString();
    }

    /**
     * Issue 11: product-space times of one module against the machine's float64 FMA peak measured
     * in the same run (FlopsBench), the memory each needs, and the dense alternative's floor: one
     * {@code m x n} product per client ({@code 2 m n r_k}) plus a thin SVD of the {@code m x n}
     * average (R-SVD, {@code 6 m n^2 + 20 n^3} for {@code m >= n}, Golub and Van Loan), at 100% of the
     * same peak, which no LAPACK reaches.
     */
    static void product(StringBuilder md, List<Result> product, List<Result> flops) {
        if (product.isEmpty()) {
            return;
        }
        int cores = Runtime.getRuntime().availableProcessors();
        double peak = flops.stream().mapToDouble(r -> FlopsBench.flops(cores) / (r.ms() * 1e-3) / 1e9).max().orElse(Double.NaN);
        md.append("## Product space (issue 11)\n\n");
        if (!flops.isEmpty()) {
            md.append("float64 FMA peak, ").append(cores).append(" cores, ").append(FlopsBench.SPECIES.length())
                    .append(" lanes: ");
            for (int i = 0; i < flops.size(); i++) {
                md.append(i == 0 ? "" : ", ").append(f1(FlopsBench.flops(cores) / (flops.get(i).ms() * 1e-3) / 1e9));
            }
            md.append(" GFLOP/s (best taken as the peak).\n\n");
        }
        md.append("One module; ranks uniform in 8..64 (seeded), S = sum r_k, R = max r_k. GFLOP counts the Gram matrices only, "
                + "(m + n) S (S + 1), so svd's and fidelity's GFLOP/s understate their rate (svdAfterGrams, which starts from the Grams, has none); "
                + "denseAlternative (form the m x n average in float64, then EJML's thin SVD) is credited 2 m n S + 6 m n^2 + 20 n^3. Memory: the clients' float32 factors "
                + "(read in place) and the two float64 S x S Grams the method adds.\n\n");
        md.append("| shape | K | S | method | time (ms) | ± | GFLOP | GFLOP/s | % peak | factors (MB) | Grams (MB) "
                + "| dense floor (s) |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (Result r : product) {
            String shape = r.p("shape");
            int k = r.clients();
            long stack = 0;
            for (int rank : ProductBench.ranks(k)) {
                stack += rank;
            }
            double gflop = ProductBench.flops(r.method(), shape, k) / 1e9;
            double rate = gflop / (r.ms() * 1e-3);
            double m = ProductBench.rows(shape), n = ProductBench.cols(shape);
            double dense = 2 * m * n * stack + 6 * Math.max(m, n) * Math.min(m, n) * Math.min(m, n) + 20 * Math.pow(Math.min(m, n), 3);
            md.append("| ").append(shape).append(" | ").append(k).append(" | ").append(stack).append(" | ").append(r.method())
                    .append(" | ").append(g3(r.ms())).append(" | ").append(Double.isFinite(r.errorMs()) ? g3(r.errorMs()) : "")
                    .append(" | ").append(Double.isFinite(gflop) ? f1(gflop) : "").append(" | ")
                    .append(Double.isFinite(rate) ? f1(rate) : "").append(" | ")
                    .append(Double.isFinite(peak) && Double.isFinite(rate) ? pct(rate / peak) : "").append(" | ")
                    .append(f1(ProductBench.factorBytes(shape, k) / 1e6)).append(" | ").append(f1(2.0 * stack * stack * 8 / 1e6))
                    .append(" | ").append(Double.isFinite(peak) ? f1(dense / 1e9 / peak) : "").append(" |\n");
        }
        md.append('\n');
    }

    /**
     * Issue 8's targets on its workload (REPLICATION, 16 clients, both Llama modules, each rank mix):
     * batch >= 70% of the triad and >= 3x the careful torch loop measured in the same run (peers.jsonl
     * beside the results, written by {@code bin/fedlora-bench issue8}); streaming >= 75% of its own
     * traffic limit ({@link Workload#streamingTraffic} at the triad's rate).
     */
    static void issue8(StringBuilder md, List<Result> aggregate, double triad, List<JsonNode> peers) {
        List<Result> slice = select(aggregate, r -> r.p("shape").equals("llama7b") && r.clients() == 16
                && r.p("strategy").equals("replication") && !r.method().equals("padThenAverage"));
        if (slice.isEmpty() || select(slice, r -> r.p("mix").equals("pow2")).isEmpty()) {
            return;
        }
        md.append("## Issue 8 configuration\n\nOne REPLICATION round of 16 clients, one 4096x4096 and one 11008x4096 "
                + "module, in-process steady state, measured in the same run as the triad. Ranks uniform from 8..64 "
                + "(`uniform`) and from {8, 16, 32, 64} (`pow2`), seeded. Streaming's own limit: every client read once, "
                + "the sums it touches read and written, the sums read and the global adapter written once at finish, "
                + "at the triad's rate. Peers: `benchmarks/baseline/careful_loop.py` (zeroed global, "
                + "`a[:r].add_(A_k, alpha=w)`, `b[:, :r].add_(B_k, alpha=w)`, one divide), median of its repeats.\n\n");
        md.append("| mix | who | path | time (ms) | GB/s | % triad | target |\n|---|---|---|---:|---:|---:|---|\n");
        for (String mix : List.of("uniform", "pow2")) {
            JsonNode torch = null;
            for (JsonNode peer : peers) {
                if (peer.path("label").asText().equals(mix)) {
                    double ms = peer.path("median_ms").asDouble();
                    md.append("| ").append(mix).append(" | ").append(peer.path("version").asText()).append(" | careful loop | ")
                            .append(g3(ms)).append(" (best ").append(g3(peer.path("best_ms").asDouble())).append(") | ")
                            .append(f1(peer.path("gbps").asDouble())).append(" | ")
                            .append(Double.isFinite(triad) ? pct(peer.path("gbps").asDouble() / triad) : "").append(" | |\n");
                    if (peer.path("peer").asText().equals("torch")) {
                        torch = peer;
                    }
                }
            }
            for (String backend : List.of("vector", "scalar", "cuda")) {
                for (String path : List.of("fused", "streaming")) {
                    Result r = first(slice, x -> x.p("mix").equals(mix) && x.p("backend").equals(backend) && x.method().equals(path));
                    if (r == null) {
                        continue;
                    }
                    String target;
                    if (path.equals("fused")) {
                        double share = r.gbps() / triad;
                        target = (share >= 0.7 ? "met" : "missed") + ": " + pct(share) + " of triad (>= 70%)";
                        if (torch != null) {
                            double speedUp = torch.path("median_ms").asDouble() / r.ms();
                            target += "; " + f2(speedUp) + "x torch (" + (speedUp >= 3 ? "met" : "missed") + ", >= 3x)";
                        }
                    } else {
                        long traffic = Workload.streamingTraffic(r.p("shape"), mix, r.clients());
                        double limitMs = traffic / (triad * 1e9) * 1e3;
                        double share = limitMs / r.ms();
                        target = (share >= 0.75 ? "met" : "missed") + ": " + pct(share) + " of its own limit ("
                                + g3(limitMs) + " ms for " + mb(traffic) + " MB; >= 75%)";
                    }
                    md.append("| ").append(mix).append(" | fedlora ").append(backendLabel(backend)).append(" | ")
                            .append(pathTitle(path)).append(" | ").append(time(r)).append(" | ").append(rate(r))
                            .append(" | ").append(share(r, triad)).append(" | ").append(target).append(" |\n");
                }
            }
        }
        md.append('\n');
    }

    /** The lead's issue-2 configuration: REPLICATION, 16 clients, both Llama modules, ranks 8..64. */
    static void issue2(StringBuilder md, List<Result> aggregate, double triad) {
        List<Result> slice = select(aggregate, r -> r.p("shape").equals("llama7b") && r.clients() == 16);
        if (slice.isEmpty()) {
            return;
        }
        md.append("## Issue 2 configuration\n\nOne fused REPLICATION round of 16 clients on Llama-7B-like modules "
                + "(one 4096x4096 and one 11008x4096 module, ranks uniform 8–64; ")
                .append(mb(slice.get(0).bytes())).append(" MB moved per round), measured in the same run as the triad.\n\n");
        md.append("| backend | path | time (ms) | GB/s | % triad | speed-up over pad-then-average |\n|---|---|---:|---:|---:|---:|\n");
        for (String backend : List.of("scalar", "vector", "cuda")) {
            Result pad = first(slice, r -> r.p("backend").equals(backend) && r.method().equals("padThenAverage"));
            for (String path : PATHS) {
                Result r = first(slice, x -> x.p("backend").equals(backend) && x.method().equals(path));
                if (r != null) {
                    md.append("| ").append(backendLabel(backend)).append(" | ").append(pathTitle(path)).append(" | ")
                            .append(time(r)).append(" | ").append(rate(r)).append(" | ").append(share(r, triad))
                            .append(" | ").append(path.equals("padThenAverage") ? "1.00x" : speedUp(pad, r)).append(" |\n");
                }
            }
        }
        md.append('\n');
        for (String path : List.of("fused", "streaming")) {
            Result s = first(slice, r -> r.p("backend").equals("scalar") && r.method().equals(path));
            Result v = first(slice, r -> r.p("backend").equals("vector") && r.method().equals(path));
            if (s != null && v != null) {
                md.append("- ").append(pathTitle(path)).append(": vector is ").append(f2(s.ms() / v.ms()))
                        .append("x scalar's speed.\n");
            }
        }
        for (String backend : List.of("scalar", "vector")) {
            Result b = first(slice, r -> r.p("backend").equals(backend) && r.method().equals("fused"));
            Result s = first(slice, r -> r.p("backend").equals(backend) && r.method().equals("streaming"));
            if (b != null && s != null) {
                md.append("- ").append(backend).append(": streaming takes ").append(f2(s.ms() / b.ms()))
                        .append("x the batch time.\n");
            }
        }
        md.append('\n');
    }

    /** The issue's three targets, computed over every configuration in the file. */
    static void targets(StringBuilder md, List<Result> aggregate, double triad) {
        if (aggregate.isEmpty()) {
            return;
        }
        md.append("## Targets\n\n");
        List<Result> vectorFused = select(aggregate, r -> r.p("backend").equals("vector") && r.method().equals("fused"));
        Result best = vectorFused.stream().max(Comparator.comparingDouble(Result::gbps)).orElse(null);
        if (best != null && Double.isFinite(triad)) {
            List<Result> large = select(vectorFused, r -> !r.p("shape").equals("distilbert") && r.clients() >= 10);
            double largeMedian = median(large.stream().mapToDouble(r -> r.gbps() / triad).boxed().toList());
            md.append("- **Vector fused >= 70% of the triad**: best ").append(share(best, triad)).append(" (")
                    .append(describe(best)).append("); median over Llama shapes with K >= 10: ")
                    .append(Double.isNaN(largeMedian) ? "n/a" : pct(largeMedian)).append(". ")
                    .append(best.gbps() / triad >= 0.7 ? "Met at best" : "Missed: the best is "
                            + String.format(Locale.ROOT, "%.0f", 100 * (0.7 - best.gbps() / triad))
                            + " percentage points short of 70%").append(".\n");
        }
        List<Double> speedUps = new ArrayList<>();
        List<String> slow = new ArrayList<>();
        for (Map<String, String> key : configurations(aggregate)) {
            Result pad = find(aggregate, key, "padThenAverage"), fused = find(aggregate, key, "fused");
            if (pad != null && fused != null) {
                double s = pad.ms() / fused.ms();
                speedUps.add(s);
                if (s < 2) {
                    slow.add(describe(fused) + " " + f2(s) + "x");
                }
            }
        }
        if (!speedUps.isEmpty()) {
            md.append("- **Fused >= 2x faster than pad-then-average**: ").append(speedUps.size() - slow.size())
                    .append(" of ").append(speedUps.size()).append(" configurations; speed-up min ")
                    .append(f2(speedUps.stream().mapToDouble(d -> d).min().orElseThrow())).append("x, median ")
                    .append(f2(median(speedUps))).append("x, max ")
                    .append(f2(speedUps.stream().mapToDouble(d -> d).max().orElseThrow())).append("x.")
                    .append(slow.isEmpty() ? "" : " Below 2x: " + String.join("; ", slow.subList(0, Math.min(8, slow.size())))
                            + (slow.size() > 8 ? "; ..." : "") + ".").append('\n');
        }
        for (String path : List.of("fused", "streaming")) {
            List<Double> ratios = new ArrayList<>();
            List<String> slower = new ArrayList<>();
            for (Result v : select(aggregate, r -> r.p("backend").equals("vector") && r.method().equals(path))) {
                Map<String, String> key = new LinkedHashMap<>(v.params());
                key.put("backend", "scalar");
                Result s = find(aggregate, key, path);
                if (s != null) {
                    double ratio = s.ms() / v.ms();
                    ratios.add(ratio);
                    // Slower beyond the noise: the two confidence intervals do not overlap.
                    if (v.ms() - v.errorMs() > s.ms() + s.errorMs()) {
                        slower.add(describe(v) + " " + f2(ratio) + "x");
                    }
                }
            }
            if (!ratios.isEmpty()) {
                md.append("- **Vector never slower than scalar** (").append(path).append("): scalar time / vector time min ")
                        .append(f2(ratios.stream().mapToDouble(d -> d).min().orElseThrow())).append("x, median ")
                        .append(f2(median(ratios))).append("x, max ")
                        .append(f2(ratios.stream().mapToDouble(d -> d).max().orElseThrow())).append("x over ")
                        .append(ratios.size()).append(" configurations; slower beyond the error bars in ")
                        .append(slower.size()).append(slower.isEmpty() ? "" : ": " + String.join("; ",
                                slower.subList(0, Math.min(8, slower.size()))) + (slower.size() > 8 ? "; ..." : ""))
                        .append(".\n");
            }
        }
        md.append('\n');
    }

    static void vectorOverScalar(StringBuilder md, List<Result> aggregate) {
        List<Result> vectors = select(aggregate, r -> r.p("backend").equals("vector"));
        boolean any = false;
        StringBuilder table = new StringBuilder("## Vector over scalar\n\nscalar time / vector time, per path (> 1: vector faster).\n\n"
                + "| ranks | shape | K | strategy | pad-then-average | fused | streaming |\n|---|---|---:|---|---:|---:|---:|\n");
        for (Map<String, String> key : configurations(vectors)) {
            Map<String, String> scalarKey = new LinkedHashMap<>(key);
            scalarKey.put("backend", "scalar");
            StringBuilder row = new StringBuilder("| " + key.get("mix") + " | " + key.get("shape") + " | " + key.get("clients")
                    + " | " + key.get("strategy"));
            boolean found = false;
            for (String path : PATHS) {
                Result v = find(vectors, key, path), s = find(aggregate, scalarKey, path);
                found |= v != null && s != null;
                row.append(" | ").append(v != null && s != null ? f2(s.ms() / v.ms()) + "x" : "");
            }
            if (found) {
                any = true;
                table.append(row).append(" |\n");
            }
        }
        if (any) {
            md.append(table).append('\n');
        }
    }

    static void padding(StringBuilder md, List<Result> pads) {
        if (pads.isEmpty()) {
            return;
        }
        md.append("## Padding ops alone\n\nOne client's A and B from rank ").append(pads.get(0).p("rank"))
                .append(" to rank ").append(pads.get(0).p("globalRank"))
                .append("; arraycopy copies the same output bytes (one thread, into a fresh array).\n\n")
                .append("| shape | backend | op | time (us) | GB/s | time / arraycopy time |\n|---|---|---|---:|---:|---:|\n");
        for (Result r : pads) {
            Result copy = first(pads, x -> x.method().equals("arraycopy") && x.p("shape").equals(r.p("shape"))
                    && x.p("backend").equals(r.p("backend")));
            md.append("| ").append(r.p("shape")).append(" | ").append(r.method().equals("arraycopy") ? "(JDK)" : backendLabel(r.p("backend")))
                    .append(" | ").append(r.method()).append(" | ").append(g3(r.ms() * 1e3))
                    .append(Double.isFinite(r.errorMs()) ? " ± " + g3(r.errorMs() * 1e3) : "").append(" | ")
                    .append(rate(r)).append(" | ").append(copy == null ? "" : f2(r.ms() / copy.ms()) + "x").append(" |\n");
        }
        md.append('\n');
    }

    /** KernelBench: the fused path's parts, one kernel call on one module's factors. */
    static void kernels(StringBuilder md, List<Result> parts, double triad) {
        if (parts.isEmpty()) {
            return;
        }
        md.append("## Kernel breakdown\n\nOne kernel call over one module's factors of all clients (")
                .append(shapeTitle(parts.get(0).p("shape"))).append(", K=").append(parts.get(0).p("clients"))
                .append(", ranks ").append(mixTitle(parts.get(0).p("mix"))).append("). sumA: weighted sum of the A factors "
                        + "(rows of `in` floats); sumB: of the B factors (rows of only r_k floats); finiteScan: the "
                        + "NaN/infinity check the facade runs on every factor before summing. GB/s = bytes read + written / time.\n\n")
                .append("| backend | kernel | time (ms) | GB/s | % triad |\n|---|---|---:|---:|---:|\n");
        for (Result r : parts) {
            md.append("| ").append(backendLabel(r.p("backend"))).append(" | ").append(r.method()).append(" | ").append(time(r))
                    .append(" | ").append(rate(r)).append(" | ").append(share(r, triad)).append(" |\n");
        }
        md.append('\n');
    }

    // ---- helpers -------------------------------------------------------------------------------

    static List<Result> select(List<Result> results, Predicate<Result> which) {
        return results.stream().filter(which).toList();
    }

    static Result first(List<Result> results, Predicate<Result> which) {
        return results.stream().filter(which).findFirst().orElse(null);
    }

    static Result find(List<Result> results, Map<String, String> params, String method) {
        return first(results, r -> r.method().equals(method) && r.params().equals(params));
    }

    /** Distinct parameter sets, ordered by K, strategy, backend. */
    static List<Map<String, String>> configurations(List<Result> results) {
        List<Map<String, String>> keys = new ArrayList<>();
        for (Result r : results) {
            if (!keys.contains(r.params())) {
                keys.add(r.params());
            }
        }
        keys.sort(Comparator.<Map<String, String>>comparingInt(k -> Integer.parseInt(k.getOrDefault("clients", "0")))
                .thenComparingInt(k -> List.of(STRATEGIES).indexOf(k.get("strategy")))
                .thenComparing(k -> k.getOrDefault("backend", "")));
        return keys;
    }

    static double median(List<Double> values) {
        if (values.isEmpty()) {
            return Double.NaN;
        }
        List<Double> sorted = values.stream().sorted().toList();
        int n = sorted.size();
        return n % 2 == 1 ? sorted.get(n / 2) : (sorted.get(n / 2 - 1) + sorted.get(n / 2)) / 2;
    }

    static String describe(Result r) {
        return r.p("backend") + " " + r.p("strategy") + " " + r.p("shape") + " K=" + r.p("clients") + " " + r.p("mix");
    }

    static String time(Result r) {
        if (r == null) {
            return "";
        }
        return g3(r.ms()) + (Double.isFinite(r.errorMs()) ? " ± " + g3(r.errorMs()) : "");
    }

    static String rate(Result r) {
        if (r == null) {
            return "";
        }
        return f1(r.gbps()) + (Double.isFinite(r.gbpsError()) ? " ± " + f1(r.gbpsError()) : "");
    }

    static String share(Result r, double triad) {
        return r == null || !Double.isFinite(triad) ? "" : pct(r.gbps() / triad);
    }

    static String speedUp(Result pad, Result path) {
        return pad == null || path == null ? "" : f2(pad.ms() / path.ms()) + "x";
    }

    static String backendLabel(String backend) {
        return backend.equals("cuda") ? "cuda (emulated)" : backend;
    }

    static String pathTitle(String path) {
        return switch (path) {
            case "fused" -> "fused batch (aggregate)";
            case "streaming" -> "streaming (Round)";
            default -> "pad-then-average";
        };
    }

    static String shapeTitle(String shape) {
        return switch (shape) {
            case "distilbert" -> "DistilBERT 768x768";
            case "llama-attn" -> "Llama-7B attention 4096x4096";
            case "llama-mlp" -> "Llama-7B MLP 11008x4096";
            case "llama7b" -> "Llama-7B 4096x4096 + 11008x4096";
            default -> shape;
        };
    }

    static String mixTitle(String mix) {
        return mix.equals("paper") ? "90% rank 5, 10% rank 20 (paper)" : "uniform 8–64";
    }

    static String mb(long bytes) {
        return f1(bytes / 1e6);
    }

    static String f1(double v) {
        return String.format(Locale.ROOT, "%.1f", v);
    }

    static String f2(double v) {
        return String.format(Locale.ROOT, "%.2f", v);
    }

    static String pct(double v) {
        return String.format(Locale.ROOT, "%.0f%%", 100 * v);
    }

    /** Three significant digits, no exponent. */
    static String g3(double v) {
        if (!Double.isFinite(v)) {
            return "";
        }
        double a = Math.abs(v);
        int decimals = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : a >= 0.1 ? 3 : 4;
        return String.format(Locale.ROOT, "%." + decimals + "f", v);
    }

    // ---- SVG -------------------------------------------------------------------------------------

    /**
     * Small multiples: one column per shape, one row per path; in each panel GB/s against K
     * (log scale) with one line per backend and strategy (colour: strategy, dash: backend) and the
     * triad as a grey dashed line. Uniform ranks only, the one mix measured at every K.
     */
    static final class Chart {
        static final int PANEL_W = 300, PANEL_H = 210, LEFT = 60, TOP = 50, GAP_X = 40, GAP_Y = 60;
        static final Map<String, String> COLOURS = Map.of("zero", "#1f77b4", "replication", "#d62728", "norm", "#2ca02c");
        static final Map<String, String> DASHES = Map.of("scalar", "6 4", "vector", "", "cuda", "2 3");

        final List<Result> results;
        final double triad;

        Chart(List<Result> all) {
            this.results = select(all, r -> r.type().equals("AggregateBench") && r.p("mix").equals("uniform")
                    && !r.p("shape").equals("llama7b"));
            this.triad = select(all, r -> r.type().equals("TriadBench")).stream().mapToDouble(Result::gbps)
                    .average().orElse(Double.NaN);
        }

        String svg() {
            List<String> shapes = new ArrayList<>();
            for (String s : SHAPES) {
                if (results.stream().anyMatch(r -> r.p("shape").equals(s))) {
                    shapes.add(s);
                }
            }
            int columns = Math.max(1, shapes.size());
            int width = LEFT + columns * (PANEL_W + GAP_X) + 150, height = TOP + PATHS.length * (PANEL_H + GAP_Y) + 20;
            double max = results.stream().mapToDouble(Result::gbps).max().orElse(1);
            if (Double.isFinite(triad)) {
                max = Math.max(max, triad);
            }
            double yMax = niceCeiling(max * 1.05);
            TreeSet<Integer> ks = new TreeSet<>();
            results.forEach(r -> ks.add(r.clients()));
            StringBuilder s = new StringBuilder();
            s.append("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"").append(width).append("\" height=\"").append(height)
                    .append("\" viewBox=\"0 0 ").append(width).append(' ').append(height)
                    .append("\" font-family=\"sans-serif\" font-size=\"11\">\n")
                    .append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n")
                    .append(text(LEFT, 20, "fedlora aggregation throughput: GB/s against clients K (ranks uniform 8-64)", "start", 14));
            for (int row = 0; row < PATHS.length; row++) {
                for (int col = 0; col < shapes.size(); col++) {
                    panel(s, LEFT + col * (PANEL_W + GAP_X), TOP + row * (PANEL_H + GAP_Y), PATHS[row], shapes.get(col), yMax, ks);
                }
            }
            legend(s, LEFT + columns * (PANEL_W + GAP_X), TOP);
            return s.append("</svg>\n").toString();
        }

        void panel(StringBuilder s, int x0, int y0, String path, String shape, double yMax, TreeSet<Integer> ks) {
            s.append(text(x0 + PANEL_W / 2.0, y0 - 8, pathTitle(path) + " — " + shapeTitle(shape), "middle", 12));
            s.append("<rect x=\"").append(x0).append("\" y=\"").append(y0).append("\" width=\"").append(PANEL_W)
                    .append("\" height=\"").append(PANEL_H).append("\" fill=\"none\" stroke=\"#444\"/>\n");
            for (int t = 0; t <= 4; t++) {
                double v = yMax * t / 4, y = y(y0, v, yMax);
                s.append(line(x0, y, x0 + PANEL_W, y, "#ddd", "")).append(text(x0 - 4, y + 4, f1(v), "end", 10));
            }
            for (int k : ks) {
                double x = x(x0, k, ks);
                s.append(line(x, y0 + PANEL_H, x, y0 + PANEL_H + 4, "#444", "")).append(text(x, y0 + PANEL_H + 16, "" + k, "middle", 10));
            }
            s.append(text(x0 + PANEL_W / 2.0, y0 + PANEL_H + 30, "K (clients, log scale)", "middle", 10));
            s.append(text(x0 - 40, y0 + PANEL_H / 2.0, "GB/s", "middle", 10));
            if (Double.isFinite(triad)) {
                double y = y(y0, triad, yMax);
                s.append(line(x0, y, x0 + PANEL_W, y, "#888", "3 3")).append(text(x0 + PANEL_W - 4, y - 4, "triad", "end", 10));
            }
            for (String backend : List.of("scalar", "vector", "cuda")) {
                for (String strategy : STRATEGIES) {
                    List<Result> series = new ArrayList<>(select(results, r -> r.method().equals(path) && r.p("shape").equals(shape)
                            && r.p("backend").equals(backend) && r.p("strategy").equals(strategy)));
                    if (series.isEmpty()) {
                        continue;
                    }
                    series.sort(Comparator.comparingInt(Result::clients));
                    StringBuilder points = new StringBuilder();
                    for (Result r : series) {
                        double x = x(x0, r.clients(), ks), y = y(y0, r.gbps(), yMax);
                        points.append(String.format(Locale.ROOT, "%.1f,%.1f ", x, y));
                        if (Double.isFinite(r.gbpsError())) {
                            // Error bar: JMH's 99.9% confidence interval, as GB/s.
                            s.append(line(x, y(y0, r.gbps() - r.gbpsError(), yMax), x, y(y0, r.gbps() + r.gbpsError(), yMax),
                                    COLOURS.get(strategy), ""));
                        }
                        s.append(String.format(Locale.ROOT, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                                x, y, COLOURS.get(strategy)));
                    }
                    s.append("<polyline fill=\"none\" stroke=\"").append(COLOURS.get(strategy)).append("\" stroke-width=\"1.5\"")
                            .append(DASHES.get(backend).isEmpty() ? "" : " stroke-dasharray=\"" + DASHES.get(backend) + "\"")
                            .append(" points=\"").append(points.toString().strip()).append("\"/>\n");
                }
            }
        }

        void legend(StringBuilder s, int x0, int y0) {
            int y = y0;
            for (String strategy : STRATEGIES) {
                s.append(line(x0, y, x0 + 30, y, COLOURS.get(strategy), "")).append(text(x0 + 36, y + 4, strategy, "start", 11));
                y += 18;
            }
            y += 8;
            for (String backend : List.of("scalar", "vector")) {
                s.append(line(x0, y, x0 + 30, y, "#000", DASHES.get(backend))).append(text(x0 + 36, y + 4, backend, "start", 11));
                y += 18;
            }
            s.append(line(x0, y, x0 + 30, y, "#888", "3 3")).append(text(x0 + 36, y + 4, "triad", "start", 11));
        }

        double x(int x0, int k, TreeSet<Integer> ks) {
            double lo = Math.log(ks.first()), hi = Math.log(ks.last());
            double t = hi > lo ? (Math.log(k) - lo) / (hi - lo) : 0.5;
            return x0 + 20 + t * (PANEL_W - 40);
        }

        double y(int y0, double v, double yMax) {
            return y0 + PANEL_H - Math.max(0, Math.min(v, yMax)) / yMax * PANEL_H;
        }

        static double niceCeiling(double v) {
            if (!(v > 0)) {
                return 1;
            }
            double step = Math.pow(10, Math.floor(Math.log10(v)));
            for (double m : new double[] {1, 2, 2.5, 5, 10}) {
                if (m * step >= v) {
                    return m * step;
                }
            }
            return 10 * step;
        }

        static String line(double x1, double y1, double x2, double y2, String colour, String dash) {
            return String.format(Locale.ROOT, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"%s/>\n",
                    x1, y1, x2, y2, colour, dash.isEmpty() ? "" : " stroke-dasharray=\"" + dash + "\"");
        }

        static String text(double x, double y, String content, String anchor, int size) {
            String escaped = content.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;");
            return String.format(Locale.ROOT, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%d\">%s</text>\n",
                    x, y, anchor, size, Objects.requireNonNull(escaped));
        }
    }
}
