package io.fedlora.cli;

import io.fedlora.Aggregator;
import io.fedlora.tensor.DType;
import io.fedlora.InvalidUpdateException;
import io.fedlora.LoraScale;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.tensor.Tensor;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.Set;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.ParentCommand;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

/** {@code fedlora aggregate}: PEFT adapters in, one global PEFT adapter out (DESIGN §5). */
@Command(name = "aggregate", mixinStandardHelpOptions = true,
        description = "Aggregate client LoRA adapters of different ranks into one global adapter.")
final class AggregateCommand implements Callable<Integer> {

    @ParentCommand
    Main main;

    @Spec
    CommandSpec spec;

    @Option(names = "--strategy", required = true, paramLabel = "zero|replication|norm",
            converter = Options.StrategyConverter.class,
            description = "zero: zero-padding; replication: the paper's replication padding; "
                    + "norm: ||BA||_F-weighted zero-padding.")
    Strategy strategy;

    @Option(names = "--weights", split = ",", paramLabel = "w1,w2,...",
            description = "Client weights (e.g. sample counts) in the order of the CLIENT arguments; default uniform.")
    double[] weights;

    @Option(names = "--rank", paramLabel = "R", defaultValue = "0",
            description = "Global rank; default the largest client rank of each module.")
    int rank;

    @Option(names = "--backend", paramLabel = "auto|cuda|vector|scalar", defaultValue = "auto",
            converter = Options.BackendConverter.class, description = "Compute backend (default auto).")
    String backend;

    @Option(names = "--dtype", paramLabel = "f32|bf16|f16", defaultValue = "f32",
            converter = Options.DTypeConverter.class, description = "Element type of the output (default f32).")
    DType dtype;

    @Option(names = "--scale", paramLabel = "none|fold", defaultValue = "none",
            converter = Options.ScaleConverter.class,
            description = "none: average the factors as they are; fold: fold each client's lora_alpha/r "
                    + "(or rsLoRA's /sqrt(r)) into B and write the global scale.")
    Options.Scale scale;

    @Option(names = "--allow-missing",
            description = "Average a module over the clients that have it, instead of failing.")
    boolean allowMissing;

    @Option(names = "--progress", description = "Show progress on stderr even when it is not a terminal.")
    boolean progress;

    @Option(names = {"-o", "--output"}, required = true, paramLabel = "OUT_DIR",
            description = "Output PEFT adapter directory.")
    Path output;

    @Parameters(arity = "1..*", paramLabel = "CLIENT",
            description = "Client adapters: PEFT directories or .safetensors files.")
    List<Path> clients;

    @Override
    public Integer call() throws IOException {
        double[] w = checkedWeights(weights, clients.size(), spec);
        if (rank < 0) {
            throw new ParameterException(spec.commandLine(), "--rank must be at least 1 (or 0 for the largest client rank)");
        }
        Job job = new Job(clients, w, strategy, rank, backend, dtype, scale == Options.Scale.FOLD, allowMissing, output);
        Result result = job.run(Progress.of(main.err, progress, clients.size()));
        main.out.printf(Locale.ROOT, "%s: %d clients, %s, backend %s, global rank %d, %s in %.3f s (%.2f GB/s)%n",
                output, result.clients(), strategy.name().toLowerCase(Locale.ROOT), result.backend(),
                result.globalRank(), Progress.bytes(result.bytesRead()), result.seconds(),
                result.bytesRead() / result.seconds() / 1e9);
        if (main.verbose || spec.commandLine().getParseResult().hasMatchedOption("--verbose")) {
            main.err.printf(Locale.ROOT, "fedlora: open %.3f s, aggregate %.3f s, write %.3f s%n",
                    result.openSeconds(), result.aggregateSeconds(), result.writeSeconds());
        }
        return Main.OK;
    }

    static double[] checkedWeights(double[] weights, int clients, CommandSpec spec) {
        if (weights == null) {
            double[] uniform = new double[clients];
            Arrays.fill(uniform, 1.0);
            return uniform;
        }
        if (weights.length != clients) {
            throw new ParameterException(spec.commandLine(), "--weights has " + weights.length
                    + " values for " + clients + " clients");
        }
        double sum = 0;
        for (int i = 0; i < weights.length; i++) {
            if (!(weights[i] >= 0) || Double.isInfinite(weights[i])) {
                throw new ParameterException(spec.commandLine(), "--weights: value " + (i + 1) + " (" + weights[i]
                        + ") is not a finite number >= 0");
            }
            sum += weights[i];
        }
        if (sum <= 0) {
            throw new ParameterException(spec.commandLine(), "--weights: all weights are zero");
        }
        return weights.clone();
    }

    /** What one aggregation did. */
    record Result(int clients, int globalRank, String backend, long bytesRead, double seconds,
            double openSeconds, double aggregateSeconds, double writeSeconds) {
    }

    /**
     * One aggregation, file to file, shared by {@code aggregate} and {@code demo}. Every client
     * file is memory-mapped and handed to the facade's batch call, which reads each client's
     * bytes exactly once (the streaming {@link io.fedlora.Round} would scan each client twice:
     * once to check it, once to add it). Mapped pages are the page cache's, not the heap's, so
     * many large clients cost address space, not memory the JVM must hold.
     */
    record Job(List<Path> clients, double[] weights, Strategy strategy, int rank, String backend, DType dtype,
            boolean fold, boolean allowMissing, Path output) {

        Result run(Progress progress) throws IOException {
            long start = System.nanoTime();
            Map<String, Path> fileOf = new HashMap<>();
            Map<Path, Set<String>> keysOf = new LinkedHashMap<>();
            List<PeftAdapter> open = new ArrayList<>();
            String backendName;
            Map<String, Tensor> global;
            long bytes = 0;
            try {
                List<ClientUpdate> updates = new ArrayList<>();
                for (int k = 0; k < clients.size(); k++) {
                    Path path = clients.get(k);
                    String id = path.toString();
                    PeftAdapter adapter = PeftAdapter.open(path);
                    open.add(adapter);
                    if (fold && adapter.config() == null) {
                        throw new InvalidFileException(id, "--scale fold needs lora_alpha, but there is no "
                                + PeftAdapter.CONFIG + " for this adapter");
                    }
                    if (progress.enabled()) {
                        // Bring the file in now, so that the progress shows the reading as it happens.
                        adapter.load();
                    }
                    fileOf.put(id, path);
                    keysOf.put(path, Set.copyOf(adapter.tensors().keySet()));
                    updates.add(adapter.toUpdate(id, weights[k]));
                    bytes += adapter.byteSize();
                    progress.update(k + 1, bytes);
                }
                progress.done();
                long opened = System.nanoTime();
                try (Aggregator aggregator = aggregator(open.get(0))) {
                    backendName = aggregator.backendName();
                    global = aggregator.aggregate(updates);
                } catch (IllegalArgumentException e) {
                    if (e instanceof InvalidUpdateException || allowMissing) {
                        throw e;
                    }
                    // The facade names a tensor that only some clients have, not who lacks it.
                    checkPresence(keysOf);
                    throw e;
                }
                long aggregated = System.nanoTime();
                int globalRank = rank > 0 ? rank : PeftAdapter.moduleRanks(global).values().stream()
                        .mapToInt(Integer::intValue).max().orElse(1);
                PeftAdapter first = open.get(0);
                PeftAdapter.write(output, global, dtype, first.config(), first.metadata(), globalRank);
                long end = System.nanoTime();
                return new Result(clients.size(), globalRank, backendName, bytes, (end - start) / 1e9,
                        (opened - start) / 1e9, (aggregated - opened) / 1e9, (end - aggregated) / 1e9);
            } catch (InvalidUpdateException e) {
                throw clientFailure(e, fileOf);
            } finally {
                progress.done();
                open.forEach(PeftAdapter::close);
            }
        }

        private Aggregator aggregator(PeftAdapter first) throws InvalidFileException {
            Aggregator.Builder builder = Aggregator.builder()
                    .strategy(strategy)
                    .globalRank(rank)
                    .allowMissing(allowMissing);
            if (!backend.equals("auto")) {
                builder.backend(backend);
            }
            if (fold) {
                builder.foldScale(globalScale(first));
            }
            return builder.build();
        }

        /**
         * The facade refuses a tensor that only some clients have, naming the tensor; this names the
         * first file that lacks it, which is what the user has to look at.
         */
        private static void checkPresence(Map<Path, Set<String>> keysOf) throws InvalidFileException {
            Set<String> all = new LinkedHashSet<>();
            keysOf.values().forEach(all::addAll);
            for (var e : keysOf.entrySet()) {
                for (String key : all) {
                    if (!e.getValue().contains(key)) {
                        long have = keysOf.values().stream().filter(keys -> keys.contains(key)).count();
                        throw new InvalidFileException(e.getKey().toString(), "has no '" + key + "', which "
                                + have + " of " + keysOf.size() + " clients have (--allow-missing averages it "
                                + "over the clients that have it)");
                    }
                }
            }
        }

        /** The scale the output adapter will have under PEFT: the first client's alpha over the global rank. */
        private static LoraScale globalScale(PeftAdapter first) throws InvalidFileException {
            if (first.config() == null) {
                throw new InvalidFileException(first.source().toString(), "--scale fold needs lora_alpha, but there is no "
                        + PeftAdapter.CONFIG + " for this adapter");
            }
            return first.config().scale();
        }
    }

    /** Names the file behind a client the facade rejected. */
    static Main.ClientFailure clientFailure(InvalidUpdateException e, Map<String, Path> fileOf) {
        String message = e.getMessage() == null ? "invalid update" : e.getMessage();
        Path file = e.clientId() == null ? null : fileOf.get(e.clientId());
        if (file != null && !message.contains(file.toString())) {
            message = file + ": " + message;
        }
        return new Main.ClientFailure(message, e);
    }
}
