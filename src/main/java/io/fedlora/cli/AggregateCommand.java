package io.fedlora.cli;

import io.fedlora.Aggregator;
import io.fedlora.tensor.DType;
import io.fedlora.InvalidUpdateException;
import io.fedlora.LoraScale;
import io.fedlora.Round;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.tensor.Tensor;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.OutputConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.product.Split;
import java.io.IOException;
import java.nio.file.Files;
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

    @Option(names = "--strategy", required = true, paramLabel = "zero|replication|norm|svd|stack",
            converter = Options.StrategyConverter.class,
            description = "zero: zero-padding; replication: the paper's replication padding; "
                    + "norm: ||BA||_F-weighted zero-padding; svd: the best rank-R approximation of the exact "
                    + "weighted average of the clients' B A (see --split); stack: FLoRA's exact stack at rank sum r_k.")
    Strategy strategy;

    @Option(names = "--split", paramLabel = "flexlora|balanced",
            converter = Options.SplitConverter.class,
            description = "How --strategy svd splits U Sigma V^T into LoRA factors (same scale * B A either way; "
                    + "continued training differs): flexlora (default, FlexLoRA / PEFT svd): B = U Sigma / s, "
                    + "A = V^T; balanced (PiSSA-like): B = U (Sigma / s)^1/2, A = (Sigma / s)^1/2 V^T; "
                    + "s the global LoRA scale with --scale fold, else 1. Only with --strategy svd (an error otherwise).")
    Split split;

    @Option(names = "--weights", split = ",", paramLabel = "w1,w2,...",
            description = "Client weights (e.g. sample counts) in the order of the clients; default uniform.")
    double[] weights;

    @Option(names = "--weights-file", paramLabel = "FILE",
            description = "Client weights, one number per line in the order of the clients (# comments allowed).")
    Path weightsFile;

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
            description = "none: average the factors as they are (the output carries the clients' weighted mean "
                    + "LoRA scale); fold: fold each client's lora_alpha/r (or rsLoRA's /sqrt(r)) into B and write "
                    + "the first client's alpha at the global rank.")
    Options.Scale scale;

    @Option(names = "--allow-missing",
            description = "Average a module over the clients that have it, instead of failing.")
    boolean allowMissing;

    @Option(names = "--force", description = "Replace an existing output adapter directory (as a whole).")
    boolean force;

    @Option(names = "--no-mmap", description = "Read each client into memory, one at a time, instead of "
            + "memory-mapping them all: a file changed during the run is reported, never a crash; memory is the "
            + "largest client plus the global adapter; costs a copy of every file.")
    boolean noMmap;

    @Option(names = "--report", paramLabel = "FILE",
            description = "Also write this aggregation's fidelity report (JSON, as `fedlora fidelity --json`) to FILE: "
                    + "how far the global's scale * B A is from the exact weighted average of the clients' updates; "
                    + "costs the Gram matrices. Not with --no-mmap.")
    Path report;

    @Option(names = "--progress", description = "Show progress on stderr even when it is not a terminal.")
    boolean progress;

    @Option(names = {"-o", "--output"}, required = true, paramLabel = "OUT_DIR",
            description = "Output PEFT adapter directory.")
    Path output;

    @Parameters(arity = "1..*", paramLabel = "CLIENT",
            description = "Client adapters: PEFT directories, .safetensors files, directories of clients, "
                    + "or @FILE, a list file of client paths (one per line).")
    List<String> clientArguments;

    @Override
    public Integer call() throws IOException {
        if (rank < 0) {
            throw new ParameterException(spec.commandLine(), "--rank must be at least 1 (or 0 for the largest client rank)");
        }
        checkRank(rank, spec);
        if (weights != null && weightsFile != null) {
            throw new ParameterException(spec.commandLine(), "give --weights or --weights-file, not both");
        }
        if (split != null && strategy != Strategy.SVD) {
            throw new ParameterException(spec.commandLine(), "--split applies to --strategy svd only; "
                    + strategy.cliName() + " has no factorisation to split");
        }
        if (strategy == Strategy.NORM && (weights != null || weightsFile != null)) {
            throw new ParameterException(spec.commandLine(), "--strategy norm weights each client by ||B A||_F "
                    + "and does not take --weights; use zero or replication for data weights");
        }
        List<Path> clients = Inputs.expand(clientArguments, spec);
        double[] w = checkedWeights(weightsFile != null ? readWeights(weightsFile, clients) : weights, clients.size(), spec);
        List<PeftAdapter.Location> locations = new ArrayList<>();
        for (Path client : clients) {
            locations.add(PeftAdapter.locate(client));
        }
        Inputs.check(locations, output, force, spec);
        checkReport(clients, spec);
        Job job = new Job(clients, w, strategy, rank, backend, dtype, scale == Options.Scale.FOLD, allowMissing,
                output, force);
        job.usage = spec;
        job.mapped = !noMmap;
        job.report = report;
        job.split = split == null ? Split.FLEXLORA : split;
        Result result = job.run(Progress.of(main.err, progress, clients.size()));
        main.out.printf(Locale.ROOT, "%s: %d clients, %s, backend %s, global rank %d, %s in %.3f s (%.2f GB/s)%n",
                output, result.clients(), strategy.cliName() + (job.split == Split.BALANCED ? " (balanced split)" : ""),
                result.backend(),
                result.globalRank(), Progress.bytes(result.bytesRead()), result.seconds(),
                result.bytesRead() / result.seconds() / 1e9);
        if (main.verbose || spec.commandLine().getParseResult().hasMatchedOption("--verbose")) {
            main.err.printf(Locale.ROOT, "fedlora: open %.3f s, aggregate %.3f s, write %.3f s%n",
                    result.openSeconds(), result.aggregateSeconds(), result.writeSeconds());
            result.notes().forEach(note -> main.err.println("fedlora: " + note));
        }
        return Main.OK;
    }

    /** The largest rank accepted on the command line: more than any layer's width. */
    static final int MAX_RANK = 1 << 20;

    static void checkRank(int rank, CommandSpec spec) {
        if (rank > MAX_RANK) {
            throw new ParameterException(spec.commandLine(), "--rank " + rank + " is larger than any layer ("
                    + "at most " + MAX_RANK + ")");
        }
    }

    /**
     * A weights file: one weight per line in the order of the clients, or {@code CLIENT WEIGHT}
     * lines (the path relative to the file's directory, the weight last) that name every client
     * once, matched by file (links and other spellings of a path are the same client). Blank lines
     * and # comments are skipped; the two forms are not mixed.
     */
    static double[] readWeights(Path file, List<Path> clients) throws IOException {
        List<String> lines;
        try {
            lines = java.nio.file.Files.readAllLines(file);
        } catch (java.nio.charset.MalformedInputException e) {
            throw new InvalidFileException(file.toString(), "is not valid UTF-8 text");
        } catch (java.nio.file.NoSuchFileException e) {
            throw new InvalidFileException(file.toString(), "no such file");
        }
        List<Double> values = new ArrayList<>();
        Map<Object, Double> byClient = new LinkedHashMap<>();
        Path base = file.toAbsolutePath().getParent();
        for (int n = 0; n < lines.size(); n++) {
            String line = lines.get(n).strip();
            if (line.isEmpty() || line.startsWith("#")) {
                continue;
            }
            int space = line.lastIndexOf(' ') >= 0 ? line.lastIndexOf(' ') : line.lastIndexOf('\t');
            String number = space < 0 ? line : line.substring(space + 1);
            double value;
            try {
                value = Double.parseDouble(number);
            } catch (NumberFormatException e) {
                throw new InvalidFileException(file.toString(), "line " + (n + 1) + " ('" + line + "') is not "
                        + (space < 0 ? "a number" : "CLIENT WEIGHT"));
            }
            if (space < 0) {
                values.add(value);
                continue;
            }
            Path named = Path.of(line.substring(0, space).strip());
            Path client = named.isAbsolute() ? named : base.resolve(named);
            Object key;
            try {
                key = fileKey(client);
            } catch (IOException e) {
                throw new InvalidFileException(file.toString(), "line " + (n + 1) + ": no client " + named);
            }
            if (byClient.put(key, value) != null) {
                throw new InvalidFileException(file.toString(), "line " + (n + 1) + ": " + named + " has a weight already");
            }
        }
        if (!byClient.isEmpty() && !values.isEmpty()) {
            throw new InvalidFileException(file.toString(), "mixes WEIGHT lines and CLIENT WEIGHT lines");
        }
        if (byClient.isEmpty()) {
            return values.stream().mapToDouble(Double::doubleValue).toArray();
        }
        double[] weights = new double[clients.size()];
        for (int k = 0; k < clients.size(); k++) {
            Double w = byClient.remove(fileKey(clients.get(k)));
            if (w == null) {
                throw new InvalidFileException(file.toString(), "has no weight for client " + clients.get(k));
            }
            weights[k] = w;
        }
        if (!byClient.isEmpty()) {
            throw new InvalidFileException(file.toString(), "names " + byClient.size() + " path(s) that are not "
                    + "among the clients");
        }
        return weights;
    }

    /** What identifies a client: its file key (device and inode), else its real path. */
    static Object fileKey(Path client) throws IOException {
        Object key = java.nio.file.Files.readAttributes(client, java.nio.file.attribute.BasicFileAttributes.class).fileKey();
        return key != null ? key : client.toRealPath();
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

    /** What one aggregation did; notes are printed with --verbose. */
    record Result(int clients, int globalRank, String backend, long bytesRead, double seconds,
            double openSeconds, double aggregateSeconds, double writeSeconds, List<String> notes) {
    }

    /** What the output's config needs of each client once its data is gone. */
    record ClientInfo(AdapterConfig config, Map<String, Integer> ranks) {
    }

    /** A test seam: runs after every client is opened and before any is aggregated (--no-mmap: after each is read). */
    static volatile java.util.function.Consumer<List<PeftAdapter>> afterOpen = open -> { };

    /**
     * One aggregation, file to file, shared by {@code aggregate} and {@code demo}. Every client
     * file is memory-mapped and handed to the facade's batch call, which reads each client's
     * bytes exactly once (the streaming {@link io.fedlora.Round} would scan each client twice:
     * once to check it, once to add it). Mapped pages are the page cache's, not the heap's, so
     * many large clients cost address space, not memory the JVM must hold.
     */
    /** The report goes next to the output: never over an input, into one, or into -o (which is replaced whole). */
    private void checkReport(List<Path> clients, CommandSpec spec) {
        if (report == null) {
            return;
        }
        if (noMmap) {
            throw new ParameterException(spec.commandLine(), "--report needs the clients mapped; leave out --no-mmap");
        }
        Path where = real(report);
        for (Path client : clients) {
            if (where.startsWith(real(client))) {
                throw new ParameterException(spec.commandLine(), "--report " + report + " is or lies inside the input " + client);
            }
        }
        if (where.startsWith(real(output))) {
            throw new ParameterException(spec.commandLine(), "--report " + report + " lies inside -o " + output
                    + ", which is replaced as a whole; put it beside it");
        }
        if (Files.exists(report, java.nio.file.LinkOption.NOFOLLOW_LINKS) && !force) {
            throw new ParameterException(spec.commandLine(), "--report " + report + " exists; add --force to replace it");
        }
    }

    /** The real path of {@code p}'s deepest existing ancestor, with the rest appended. */
    private static Path real(Path p) {
        Path abs = p.toAbsolutePath().normalize();
        Path existing = abs;
        while (existing != null && !Files.exists(existing)) {
            existing = existing.getParent();
        }
        try {
            return existing == null ? abs : existing.toRealPath().resolve(existing.relativize(abs));
        } catch (IOException e) {
            return abs;
        }
    }

    static final class Job {
        final List<Path> clients;
        final double[] weights;
        final Strategy strategy;
        final int rank;
        final String backend;
        final DType dtype;
        final boolean fold;
        final boolean allowMissing;
        final Path output;
        final boolean force;
        /** Memory-map the clients (batch, each byte read once) or read them one at a time (--no-mmap). */
        boolean mapped = true;
        /** Where to write the fidelity report (JSON), or null. */
        Path report;
        /** How SVD splits its factorisation (the policy's split; FLEXLORA for every other strategy). */
        Split split = Split.FLEXLORA;
        /** For usage errors found once the clients are open (a --rank too large for memory); may be null. */
        CommandSpec usage;

        Job(List<Path> clients, double[] weights, Strategy strategy, int rank, String backend, DType dtype,
                boolean fold, boolean allowMissing, Path output, boolean force) {
            this.clients = clients;
            this.weights = weights;
            this.strategy = strategy;
            this.rank = rank;
            this.backend = backend;
            this.dtype = dtype;
            this.fold = fold;
            this.allowMissing = allowMissing;
            this.output = output;
            this.force = force;
        }

        Result run(Progress progress) throws IOException {
            long start = System.nanoTime();
            Map<String, Path> fileOf = new HashMap<>();
            Map<Path, Set<String>> keysOf = new LinkedHashMap<>();
            List<PeftAdapter> open = new ArrayList<>();
            List<ClientInfo> infos = new ArrayList<>();
            Map<String, long[]> features = new LinkedHashMap<>();
            List<String> notes = new ArrayList<>();
            String backendName;
            Map<String, Tensor> global;
            Map<String, String> firstMetadata = null;
            LoraScale foldScale = null;
            long bytes = 0;
            long opened;
            Aggregator aggregator = null;
            Round round = null;
            String reportJson = null;
            try {
                List<ClientUpdate> updates = new ArrayList<>();
                for (int k = 0; k < clients.size(); k++) {
                    Path path = clients.get(k);
                    String id = path.toString();
                    PeftAdapter adapter = PeftAdapter.open(path, mapped);
                    open.add(adapter);
                    if (fold && adapter.config() == null) {
                        throw new InvalidFileException(id, "--scale fold needs lora_alpha, but there is no "
                                + PeftAdapter.CONFIG + " for this adapter");
                    }
                    if (progress.enabled() && mapped) {
                        // Bring the file in now, so that the progress shows the reading as it happens.
                        readingGuardRun(open, adapter::load);
                    }
                    fileOf.put(id, path);
                    keysOf.put(path, Set.copyOf(adapter.tensors().keySet()));
                    infos.add(new ClientInfo(adapter.config(), PeftAdapter.moduleRanks(adapter.tensors())));
                    features.putAll(PeftAdapter.moduleFeatures(adapter.tensors()));
                    if (k == 0) {
                        firstMetadata = new LinkedHashMap<>(adapter.metadata());
                        foldScale = fold ? adapter.config().scale() : null;
                    }
                    ClientUpdate update = adapter.toUpdate(id, weights[k]);
                    if (mapped) {
                        updates.add(update);
                    } else {
                        // One client in memory at a time: read, check, add, free.
                        checkOutputSize(features);
                        if (round == null) {
                            aggregator = aggregator(foldScale);
                            round = aggregator.newRound();
                        }
                        afterOpen.accept(List.of(adapter));
                        checkUnchanged(open);
                        round.add(update);
                        open.remove(adapter);
                        adapter.close();
                    }
                    bytes += adapter.byteSize();
                    progress.update(k + 1, bytes);
                }
                progress.done();
                opened = System.nanoTime();
                if (mapped) {
                    checkOutputSize(features);
                    afterOpen.accept(open);
                    opened = System.nanoTime();
                    try (Aggregator batch = aggregator(foldScale)) {
                        backendName = batch.backendName();
                        global = readingGuard(open, () -> batch.aggregate(updates));
                        if (report != null) {
                            reportJson = readingGuard(open, () -> batch.fidelity(updates, List.of(strategy)).toJson());
                        }
                    } catch (IllegalArgumentException e) {
                        if (e instanceof InvalidUpdateException || allowMissing) {
                            throw e;
                        }
                        // The facade names a tensor that only some clients have, not who lacks it.
                        checkPresence(keysOf);
                        throw e;
                    }
                    // A file changed under the mapping may read as zeros without any fault (the tail
                    // of its last page): refuse what was computed from it.
                    checkUnchanged(open);
                } else {
                    backendName = aggregator.backendName();
                    global = round.finish();
                }
                long aggregated = System.nanoTime();
                Map<String, Integer> outRanks = PeftAdapter.moduleRanks(global);
                int globalRank = rank > 0 ? rank : outRanks.values().stream()
                        .mapToInt(Integer::intValue).max().orElse(1);
                AdapterConfig config = outputConfig(infos, foldScale, globalRank, outRanks, notes);
                Map<String, Tensor> written = global;
                Map<String, String> metadata = firstMetadata;
                readingGuard(open, () -> {
                    PeftAdapter.write(output, output.toString(), force, written, dtype, config, metadata);
                    return null;
                });
                if (reportJson != null) {
                    writeReport(reportJson);
                }
                long end = System.nanoTime();
                return new Result(clients.size(), globalRank, backendName, bytes, (end - start) / 1e9,
                        (opened - start) / 1e9, (aggregated - opened) / 1e9, (end - aggregated) / 1e9, notes);
            } catch (InvalidUpdateException e) {
                throw clientFailure(e, fileOf);
            } finally {
                progress.done();
                open.forEach(PeftAdapter::close);
                if (round != null) {
                    round.close();
                }
                if (aggregator != null) {
                    aggregator.close();
                }
            }
        }

        /** The report written whole: a temporary file beside it, then one atomic rename. */
        private void writeReport(String json) throws IOException {
            Path target = report.toAbsolutePath();
            Path tmp = target.resolveSibling("." + target.getFileName() + ".fedlora-tmp");
            try {
                Files.writeString(tmp, json);
                Files.move(tmp, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING,
                        java.nio.file.StandardCopyOption.ATOMIC_MOVE);
            } catch (IOException e) {
                Files.deleteIfExists(tmp);
                throw new IOException("cannot write --report " + report + ": " + e.getMessage(), e);
            }
        }

        /** The output's config by {@link OutputConfig}'s rule, the clients added in their order. */
        private AdapterConfig outputConfig(List<ClientInfo> open, LoraScale foldScale, int globalRank,
                Map<String, Integer> outRanks, List<String> notes) throws InvalidFileException {
            OutputConfig summary = new OutputConfig();
            for (int k = 0; k < open.size(); k++) {
                summary.add(k, open.get(k).config(), open.get(k).ranks(), weights[k]);
            }
            return summary.config(null, foldScale, globalRank, outRanks, notes);
        }

        /** A global rank the output cannot hold is a usage error, found before anything is allocated. */
        private void checkOutputSize(Map<String, long[]> features) {
            if (rank == 0) {
                return;
            }
            long floats = 0;
            for (var e : features.entrySet()) {
                long in = e.getValue()[0], out = e.getValue()[1];
                if ((long) rank * in > Integer.MAX_VALUE - 8 || (long) rank * out > Integer.MAX_VALUE - 8) {
                    throw usageError("--rank " + rank + " is too large for module " + e.getKey() + " (" + rank + " x "
                            + Math.max(in, out) + " values do not fit one array)");
                }
                floats += (long) rank * (in + out);
            }
            long bytes = floats * Float.BYTES;
            long heap = Runtime.getRuntime().maxMemory();
            if (bytes > heap) {
                throw usageError(String.format(Locale.ROOT, "--rank %d: the global adapter would take %s, more than "
                        + "the JVM's %s heap (FEDLORA_JAVA_OPTS=-Xmx... gives it more)", rank, Progress.bytes(bytes),
                        Progress.bytes(heap)));
            }
        }

        private RuntimeException usageError(String message) {
            return usage != null ? new ParameterException(usage.commandLine(), message) : new IllegalArgumentException(message);
        }

        private Aggregator aggregator(LoraScale foldScale) {
            Aggregator.Builder builder = Aggregator.builder()
                    .strategy(strategy)
                    .globalRank(rank)
                    .allowMissing(allowMissing)
                    .split(split);
            if (!backend.equals("auto")) {
                builder.backend(backend);
            }
            if (foldScale != null) {
                builder.foldScale(foldScale);
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
    }

    /** Refuses the run if an input changed (size or modification time) since it was opened. */
    static void checkUnchanged(List<PeftAdapter> open) throws InvalidFileException {
        for (PeftAdapter a : open) {
            String change = a.changeSinceOpen();
            if (change != null) {
                throw new InvalidFileException(a.weightsFile().toString(), change + "; nothing was written");
            }
        }
    }

    interface Reading<T> {
        T run() throws IOException;
    }

    /**
     * Runs code that reads the mapped inputs, turning the JVM's report of an I/O fault on a
     * mapping (an {@link InternalError}, e.g. a file truncated while it is read) into an error that
     * names the file that changed.
     */
    static <T> T readingGuard(List<PeftAdapter> open, Reading<T> reading) throws IOException {
        try {
            return reading.run();
        } catch (InternalError | RuntimeException e) {
            if (!(e instanceof InternalError) && !(rootCause(e) instanceof InternalError)) {
                throw e;
            }
            for (PeftAdapter a : open) {
                String change = a.changeSinceOpen();
                if (change != null) {
                    throw new InvalidFileException(a.weightsFile().toString(), change
                            + " (an I/O fault while reading the mapped file)", e);
                }
            }
            throw new Main.ClientFailure("an I/O fault while reading the " + open.size() + " mapped input files, none "
                    + "of which changed size (a disk error, or a file changed on a network file system)", e);
        }
    }

    static void readingGuardRun(List<PeftAdapter> open, Runnable reading) throws IOException {
        readingGuard(open, () -> {
            reading.run();
            return null;
        });
    }

    private static Throwable rootCause(Throwable e) {
        Throwable t = e;
        for (int depth = 0; t.getCause() != null && depth < 20; depth++) {
            t = t.getCause();
        }
        return t;
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
