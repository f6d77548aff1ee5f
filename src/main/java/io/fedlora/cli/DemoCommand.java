package io.fedlora.cli;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import java.util.stream.Stream;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParentCommand;

/**
 * {@code fedlora demo}: the paper's setting (Byun & Lee, arXiv 2406.17477): ten clients, nine at
 * rank 5 and one at rank 20, on DistilBERT-sized modules (or Llama-7B-sized ones with
 * {@code --large}). The clients are written as PEFT adapters, aggregated through the files with
 * each strategy, and the table shows how much of the rank-20 client's extra components
 * (5..19, which no other client has) survives in the global adapter: zero-padding divides them
 * by the weight of all ten clients, replication keeps them whole.
 *
 * <p>Two times per strategy, because they differ by up to 20x (issue 14): <b>cold</b>, one
 * {@code fedlora aggregate} in a fresh JVM timed from outside (JVM start, read, aggregate, write,
 * exit: what a one-shot user gets), and <b>warm</b>, the same read + aggregate + write through the
 * library in this JVM after warm-up runs, the median of several (what a long-running server gets).
 */
@Command(name = "demo", mixinStandardHelpOptions = true,
        description = "Aggregate a generated set of heterogeneous-rank clients with each strategy and "
                + "show the cold (one fresh JVM) and warm (steady-state) time, throughput and how much "
                + "of the high-rank components each keeps.")
final class DemoCommand implements Callable<Integer> {

    @ParentCommand
    Main main;

    @Option(names = "--large", description = "Llama-7B-sized modules (32 layers, about 330 MB of bf16 adapters) "
            + "instead of DistilBERT-sized ones.")
    boolean large;

    @Option(names = "--backend", paramLabel = "auto|cuda|vector|scalar", defaultValue = "auto",
            converter = Options.BackendConverter.class, description = "Compute backend (default auto).")
    String backend;

    @Option(names = "--repeat", paramLabel = "N", description = "Timed warm runs per strategy, median shown "
            + "(default 5, or 2 with --large).")
    Integer repeat;

    @Option(names = "--warmup", paramLabel = "N", description = "Untimed runs per strategy before the warm ones "
            + "(default 3, or 1 with --large).")
    Integer warmup;

    @Option(names = "--seed", defaultValue = "2406", description = "Random seed of the generated clients.")
    long seed;

    @Option(names = "--keep", description = "Keep the generated adapters and outputs (the directory is printed).")
    boolean keep;

    static final int CLIENTS = 10;
    static final int LOW_RANK = 5;
    static final int HIGH_RANK = 20;

    /** One adapted layer: A is [r, in], B is [out, r]. */
    record Module(String name, int out, int in) {
    }

    static List<Module> distilbert() {
        List<Module> modules = new ArrayList<>();
        for (int layer = 0; layer < 6; layer++) {
            String p = "base_model.model.distilbert.transformer.layer." + layer + ".";
            for (String proj : List.of("q_lin", "k_lin", "v_lin", "out_lin")) {
                modules.add(new Module(p + "attention." + proj, 768, 768));
            }
            modules.add(new Module(p + "ffn.lin1", 3072, 768));
            modules.add(new Module(p + "ffn.lin2", 768, 3072));
        }
        return modules;
    }

    static List<Module> llama7b(int layers) {
        List<Module> modules = new ArrayList<>();
        for (int layer = 0; layer < layers; layer++) {
            String p = "base_model.model.model.layers." + layer + ".";
            for (String proj : List.of("q_proj", "k_proj", "v_proj", "o_proj")) {
                modules.add(new Module(p + "self_attn." + proj, 4096, 4096));
            }
            modules.add(new Module(p + "mlp.gate_proj", 11008, 4096));
            modules.add(new Module(p + "mlp.up_proj", 11008, 4096));
            modules.add(new Module(p + "mlp.down_proj", 4096, 11008));
        }
        return modules;
    }

    @Override
    public Integer call() throws IOException, InterruptedException {
        List<Module> modules = large ? llama7b(32) : distilbert();
        DType dtype = large ? DType.BF16 : DType.F32;
        int runs = repeat != null ? Math.max(1, repeat) : large ? 2 : 5;
        int warmups = warmup != null ? Math.max(0, warmup) : large ? 1 : 3;
        Path dir = Files.createTempDirectory("fedlora-demo-");
        try {
            List<Path> clients = new ArrayList<>();
            long bytes = 0;
            for (int k = 0; k < CLIENTS; k++) {
                int rank = k == CLIENTS - 1 ? HIGH_RANK : LOW_RANK;
                Path client = dir.resolve(String.format(Locale.ROOT, "client-%02d-rank%d", k, rank));
                writeClient(client, modules, rank, dtype, new SplittableRandom(seed * 1000 + k), large);
                clients.add(client);
                bytes += Files.size(client.resolve(PeftAdapter.WEIGHTS));
            }
            main.out.printf(Locale.ROOT, "%d clients (%d at rank %d, 1 at rank %d), %s: %d modules, %s of %s adapters%n",
                    CLIENTS, CLIENTS - 1, LOW_RANK, HIGH_RANK,
                    large ? "Llama-7B-sized (32 layers x q,k,v,o,gate,up,down)"
                            : "DistilBERT-sized (6 layers x q,k,v,out,ffn1,ffn2)",
                    modules.size(), Progress.bytes(bytes), dtype.name().toLowerCase(Locale.ROOT));
            double jvmStart = coldSeconds(List.of("--version"));
            main.out.printf(Locale.ROOT, "%-12s %-8s %21s %21s%n", "", "", "cold (one-shot)", "warm (server)");
            main.out.printf(Locale.ROOT, "%-12s %-8s %10s %10s %10s %10s  %s%n", "strategy", "backend",
                    "time", "GB/s", "time", "GB/s", "high-rank components kept");
            for (Strategy strategy : Strategy.values()) {
                String name = strategy.name().toLowerCase(Locale.ROOT);
                Path coldOut = dir.resolve("global-" + name + "-cold");
                List<String> args = new ArrayList<>(List.of("aggregate", "--strategy", name, "--backend", backend,
                        "-o", coldOut.toString()));
                clients.forEach(c -> args.add(c.toString()));
                double cold = coldSeconds(args);
                Path warmOut = dir.resolve("global-" + name + "-warm");
                double[] warm = new double[runs];
                String used = null;
                try (Aggregator aggregator = backend.equals("auto") ? Aggregator.of(Policy.of(strategy))
                        : Aggregator.builder().policy(Policy.of(strategy)).backend(backend).build()) {
                    used = aggregator.backendName();
                    for (int run = 0; run < warmups + runs; run++) {
                        double seconds = warmRun(aggregator, clients, warmOut);
                        if (run >= warmups) {
                            warm[run - warmups] = seconds;
                        }
                    }
                }
                java.util.Arrays.sort(warm);
                double median = runs % 2 == 1 ? warm[runs / 2] : (warm[runs / 2 - 1] + warm[runs / 2]) / 2;
                double kept = highRankShareKept(clients.get(CLIENTS - 1), coldOut, modules);
                main.out.printf(Locale.ROOT, "%-12s %-8s %8.3f s %10.2f %8.3f s %10.2f  %6.1f %%%n",
                        name, used, cold, bytes / cold / 1e9, median, bytes / median / 1e9, 100 * kept);
            }
            main.out.printf(Locale.ROOT, "cold: `fedlora aggregate` in a fresh JVM, timed from outside (JVM start, read, "
                    + "aggregate, write, exit); of that, JVM start and the CLI alone (`fedlora --version`) take %.3f s%n",
                    jvmStart);
            main.out.printf(Locale.ROOT, "warm: read + aggregate + write in this JVM, median of %d after %d warm-up "
                    + "run(s); GB/s: adapter bytes read over the time%n", runs, warmups);
            main.out.printf(Locale.ROOT, "kept: ||B A||_F of components %d..%d, which only the rank-%d client has, "
                    + "in the global adapter over the same in that client%n", LOW_RANK, HIGH_RANK - 1, HIGH_RANK);
            if (keep) {
                main.out.println("files kept in " + dir);
            }
        } finally {
            if (!keep) {
                deleteTree(dir);
            }
        }
        return Main.OK;
    }

    /**
     * Runs the command line with {@code args} in a fresh JVM (this JVM's java, class path, Vector
     * module and native-access setting, and {@code fedlora.*} properties) and returns its wall
     * time, start to exit.
     */
    static double coldSeconds(List<String> args) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>();
        command.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        if (ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            command.addAll(List.of("--add-modules", "jdk.incubator.vector"));
        }
        if (DemoCommand.class.getModule().isNativeAccessEnabled()) {
            command.add("--enable-native-access=ALL-UNNAMED");
        }
        System.getProperties().stringPropertyNames().stream().filter(k -> k.startsWith("fedlora.")).sorted()
                .forEach(k -> command.add("-D" + k + "=" + System.getProperty(k)));
        command.addAll(List.of("-cp", System.getProperty("java.class.path"), Main.class.getName()));
        command.addAll(args);
        Path log = Files.createTempFile("fedlora-demo-cold-", ".log");
        try {
            Process process = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(log.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
            long start = System.nanoTime();
            int exit = process.waitFor();
            double seconds = (System.nanoTime() - start) / 1e9;
            if (exit != 0) {
                throw new IOException("the cold run `fedlora " + String.join(" ", args) + "` exited with " + exit + ":\n"
                        + Files.readString(log).strip());
            }
            return seconds;
        } finally {
            Files.deleteIfExists(log);
        }
    }

    /** One warm run: open (map) every client, aggregate, write the global adapter, close. */
    static double warmRun(Aggregator aggregator, List<Path> clients, Path out) throws IOException {
        long start = System.nanoTime();
        List<PeftAdapter> open = new ArrayList<>();
        try {
            List<ClientUpdate> updates = new ArrayList<>();
            for (Path client : clients) {
                PeftAdapter adapter = PeftAdapter.open(client);
                open.add(adapter);
                updates.add(adapter.toUpdate(client.getFileName().toString(), 1.0));
            }
            Map<String, Tensor> global = aggregator.aggregate(updates);
            PeftAdapter.write(out, global, DType.F32, open.get(0).config(), Map.of(),
                    java.util.Collections.max(PeftAdapter.moduleRanks(global).values()));
        } finally {
            open.forEach(PeftAdapter::close);
        }
        return (System.nanoTime() - start) / 1e9;
    }

    /**
     * A client adapter: A like PEFT's Kaiming-uniform init scaled down, B small and random, as
     * after some local training. Written with PeftAdapter, so the demo goes through real files.
     */
    static void writeClient(Path dir, List<Module> modules, int rank, DType dtype, SplittableRandom random,
            boolean llama) throws IOException {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Module m : modules) {
            tensors.put(m.name() + ".lora_A.weight", random(random, rank, m.in(), 1.0 / Math.sqrt(m.in()), dtype));
            tensors.put(m.name() + ".lora_B.weight", random(random, m.out(), rank, 0.01, dtype));
        }
        Map<String, Object> config = new LinkedHashMap<>();
        config.put("peft_type", "LORA");
        config.put("task_type", llama ? "CAUSAL_LM" : "SEQ_CLS");
        config.put("base_model_name_or_path", llama ? "meta-llama/Llama-2-7b-hf" : "distilbert-base-uncased");
        config.put("r", rank);
        config.put("lora_alpha", 16);
        config.put("lora_dropout", 0.05);
        config.put("target_modules", modules.stream()
                .map(m -> m.name().substring(m.name().lastIndexOf('.') + 1)).distinct().toList());
        PeftAdapter.write(dir, tensors, dtype, AdapterConfig.of(config, "<demo>"), Map.of("format", "pt"), rank);
    }

    private static Tensor random(SplittableRandom random, int rows, int cols, double bound, DType dtype) {
        float[] values = new float[rows * cols];
        for (int i = 0; i < values.length; i++) {
            values[i] = (float) ((random.nextDouble() * 2 - 1) * bound);
        }
        return dtype == DType.F32 ? Tensor.of(values, rows, cols) : Tensor.convert(values, dtype, rows, cols);
    }

    /**
     * {@code sqrt(sum_m ||B_g A_g||^2 / sum_m ||B_h A_h||^2)} over components LOW_RANK..HIGH_RANK-1,
     * where g is the global adapter and h the high-rank client.
     */
    static double highRankShareKept(Path highClient, Path global, List<Module> modules) throws IOException {
        double kept = 0;
        double original = 0;
        try (PeftAdapter h = PeftAdapter.open(highClient); PeftAdapter g = PeftAdapter.open(global)) {
            for (Module m : modules) {
                String a = m.name() + ".lora_A.weight";
                String b = m.name() + ".lora_B.weight";
                original += normSquared(h.tensors().get(a), h.tensors().get(b), LOW_RANK, HIGH_RANK);
                kept += normSquared(g.tensors().get(a), g.tensors().get(b), LOW_RANK, HIGH_RANK);
            }
        }
        return Math.sqrt(kept / original);
    }

    /**
     * {@code ||B[:, from:to] A[from:to, :]||_F^2} in double, without forming the product:
     * {@code sum((B^T B) .* (A A^T))} over the selected components (DESIGN §2).
     */
    static double normSquared(Tensor aTensor, Tensor bTensor, int from, int to) {
        int n = (int) aTensor.dim(1);
        int rb = (int) bTensor.dim(1);
        int rows = (int) bTensor.dim(0);
        float[] a = aTensor.toFloatArray();
        float[] b = bTensor.toFloatArray();
        int r = to - from;
        double[] gramB = new double[r * r];
        for (int i = 0; i < rows; i++) {
            for (int p = 0; p < r; p++) {
                double bp = b[i * rb + from + p];
                for (int q = 0; q < r; q++) {
                    gramB[p * r + q] += bp * b[i * rb + from + q];
                }
            }
        }
        double sum = 0;
        for (int p = 0; p < r; p++) {
            for (int q = 0; q < r; q++) {
                double dot = 0;
                int ap = (from + p) * n;
                int aq = (from + q) * n;
                for (int j = 0; j < n; j++) {
                    dot += (double) a[ap + j] * a[aq + j];
                }
                sum += dot * gramB[p * r + q];
            }
        }
        return sum;
    }

    private static void deleteTree(Path root) throws IOException {
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }
}
