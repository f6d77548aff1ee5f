package io.fedlora.spark;

import io.fedlora.Policy;
import io.fedlora.Strategy;
import io.fedlora.product.Split;
import io.fedlora.tensor.DType;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaSparkContext;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code fedlora-spark}: the Spark job from the command line (bin/fedlora-spark). Exit status as
 * {@code fedlora aggregate}: 0 done (bad clients, if any, listed on stderr and in {@code --report}),
 * 1 failure (no usable client, unreadable manifest, a failed job), 2 bad usage.
 */
@Command(name = "fedlora-spark", mixinStandardHelpOptions = true, sortOptions = false,
        description = "Aggregate the clients of a manifest (client_id, path_or_uri, weight) on Spark into one global adapter.")
public final class Main implements Callable<Integer> {

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--master", paramLabel = "URL",
            description = "Spark master; default the one spark-submit was given, else local[*]. "
                    + "local-cluster[WORKERS,CORES,MB] starts executor JVMs of its own.")
    String master;

    @Option(names = "--strategy", paramLabel = "zero|replication|norm", defaultValue = "replication",
            description = "Padding strategy (default replication), or svd or stack (their partials carry every client's factors).")
    String strategy;

    @Option(names = "--split", paramLabel = "flexlora|balanced",
            description = "How --strategy svd splits its factorisation, as for fedlora aggregate: flexlora (default) "
                    + "or balanced. Only with --strategy svd.")
    String split;

    @Option(names = "--rank", paramLabel = "R", defaultValue = "0",
            description = "Global rank; default the largest client rank of each module.")
    int rank;

    @Option(names = "--scale", paramLabel = "none|fold", defaultValue = "none",
            description = "none: average the factors as they are; fold: fold each client's LoRA scale into B.")
    String scale;

    @Option(names = "--dtype", paramLabel = "f32|bf16|f16", defaultValue = "f32", description = "Output element type.")
    String dtype;

    @Option(names = "--allow-missing", description = "Average a module over the clients that have it.")
    boolean allowMissing;

    @Option(names = "--backend", paramLabel = "vector|scalar|cuda|auto", defaultValue = "vector",
            description = "The executors' backend (default vector).")
    String backend;

    @Option(names = "--threads", paramLabel = "N", defaultValue = "1",
            description = "CPU threads per task (default 1: Spark runs a task per core).")
    int threads;

    @Option(names = "--partitions", paramLabel = "N", defaultValue = "0",
            description = "Map tasks; default twice Spark's default parallelism.")
    int partitions;

    @Option(names = "--force", description = "Replace an existing adapter directory at OUT_DIR.")
    boolean force;

    @Option(names = "--report", paramLabel = "FILE",
            description = "Write the bad clients there, one per line: client_id<TAB>location<TAB>reason.")
    Path report;

    @Option(names = "--manifest", required = true, paramLabel = "FILE",
            description = "One client per line: client_id, path_or_uri, weight.")
    Path manifest;

    @Option(names = {"-o", "--output"}, required = true, paramLabel = "OUT_DIR", description = "Output PEFT directory.")
    Path output;

    @Option(names = "--verbose", description = "Where the time went; stack traces on failure.")
    boolean verbose;

    @Option(names = "--local-read", paramLabel = "map|heap", defaultValue = "map",
            description = "Local clients: memory-mapped (default) or read into the task's heap, one at a time.")
    String localRead;

    @Option(names = "--repeat", paramLabel = "N", defaultValue = "1", hidden = true,
            description = "Run the job N times in one Spark context (measurements: the first run pays executor start-up and JIT warm-up).")
    int repeat;

    public static void main(String[] args) {
        System.exit(run(args));
    }

    static int run(String... args) {
        CommandLine cli = new CommandLine(new Main());
        cli.setExecutionExceptionHandler((e, line, parsed) -> {
            line.getErr().println("fedlora-spark: " + oneLine(e));
            if (((Main) line.getCommand()).verbose) {
                e.printStackTrace(line.getErr());
            }
            return 1;
        });
        return cli.execute(args);
    }

    @Override
    public Integer call() throws IOException {
        SparkAggregation.Options options = options();
        Manifest clients = Manifest.read(manifest);
        SparkConf conf = new SparkConf().setAppName("fedlora aggregate " + manifest.getFileName());
        configure(conf, master);
        SparkAggregation.Result result;
        long start = System.nanoTime();
        try (JavaSparkContext spark = new JavaSparkContext(conf)) {
            spark.setLogLevel("WARN");
            long started = System.nanoTime();
            if (verbose) {
                System.err.printf(Locale.ROOT, "fedlora-spark: Spark start %.3f s%n", (started - start) / 1e9);
            }
            result = SparkAggregation.run(spark, clients, options, output);
            for (int run = 2; run <= repeat; run++) {
                report(result, options, "run " + (run - 1) + ": ");
                result = SparkAggregation.run(spark, clients, options, output);
            }
        }
        for (BadClient bad : result.bad()) {
            System.err.println("fedlora-spark: left out " + bad);
        }
        for (String note : result.notes()) {
            System.err.println("fedlora-spark: note: " + note);
        }
        if (report != null) {
            writeReport(report, result.bad());
        }
        report(result, options, repeat > 1 ? "run " + repeat + ": " : "");
        return 0;
    }

    private void report(SparkAggregation.Result result, SparkAggregation.Options options, String prefix) {
        double seconds = (result.setupNanos() + result.jobNanos() + result.finishNanos() + result.writeNanos()) / 1e9;
        System.out.printf(Locale.ROOT, "%s%s: %d clients (%d left out), %s, global rank %d, %.1f MB read in %.3f s, "
                        + "%d tasks, partial %.1f MB%n", prefix, output, result.clients(), result.bad().size(),
                options.policy().strategy().name().toLowerCase(Locale.ROOT), result.globalRank(), result.bytesRead() / 1e6,
                seconds, result.partitions(), result.partialBytes() / 1e6);
        if (verbose) {
            TaskResult t = result.totals();
            System.err.printf(Locale.ROOT, "fedlora-spark: driver: setup %.3f s, job %.3f s, finish %.3f s, write %.3f s; "
                            + "%d tasks: %.3f s in all, longest %.3f s (read %.3f s, add %.3f s, close %.3f s, encode %.3f s); merges %.3f s%n",
                    result.setupNanos() / 1e9, result.jobNanos() / 1e9, result.finishNanos() / 1e9,
                    result.writeNanos() / 1e9, t.tasks(), t.taskNanos() / 1e9, t.longestTaskNanos() / 1e9,
                    t.readNanos() / 1e9, t.addNanos() / 1e9, t.closeNanos() / 1e9, t.encodeNanos() / 1e9, t.mergeNanos() / 1e9);
        }
    }

    SparkAggregation.Options options() {
        Strategy s;
        try {
            s = Strategy.valueOf(strategy.trim().toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--strategy: unknown strategy '" + strategy + "'");
        }
        DType type = switch (dtype.trim().toLowerCase(Locale.ROOT)) {
            case "f32", "float32" -> DType.F32;
            case "bf16", "bfloat16" -> DType.BF16;
            case "f16", "float16" -> DType.F16;
            default -> throw new CommandLine.ParameterException(spec.commandLine(), "--dtype: expected f32, bf16 or f16, got '" + dtype + "'");
        };
        if (!scale.equals("none") && !scale.equals("fold")) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--scale: expected none or fold, got '" + scale + "'");
        }
        if (!localRead.equals("map") && !localRead.equals("heap")) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--local-read: expected map or heap, got '" + localRead + "'");
        }
        Split chosen = Split.FLEXLORA;
        if (split != null) {
            chosen = switch (split.trim().toLowerCase(Locale.ROOT)) {
                case "flexlora" -> Split.FLEXLORA;
                case "balanced" -> Split.BALANCED;
                default -> throw new CommandLine.ParameterException(spec.commandLine(),
                        "--split: expected flexlora or balanced, got '" + split + "'");
            };
            if (s != Strategy.SVD) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--split applies to --strategy svd only; "
                        + s.cliName() + " has no factorisation to split");
            }
        }
        if (rank < 0 || threads < 1 || partitions < 0) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--rank >= 0, --threads >= 1, --partitions >= 0");
        }
        return SparkAggregation.Options.of(Policy.of(s).withGlobalRank(rank).withAllowMissing(allowMissing).withSplit(chosen))
                .withFold(scale.equals("fold")).withBackend(backend, threads).withPartitions(partitions).withDtype(type)
                .withHeapLocal(localRead.equals("heap")).withForce(force || repeat > 1);
    }

    private static final Pattern LOCAL_CLUSTER = Pattern.compile("local-cluster\\[\\s*(\\d+)\\s*,\\s*(\\d+)\\s*,\\s*(\\d+)\\s*]");

    /**
     * The master (unless spark-submit set one). For the in-process masters ({@code local[N]},
     * {@code local-cluster[...]}): no web UI, the driver's and block managers' ports from
     * 19500-19799 (this project's range on shared machines), and for local-cluster the executors'
     * class path (this JVM's: Spark's jars, the library, this module) and memory (the workers').
     * A cluster's own settings are left alone.
     */
    static void configure(SparkConf conf, String master) {
        conf.setIfMissing("spark.master", master == null ? "local[*]" : master);
        String chosen = conf.get("spark.master");
        if (!chosen.startsWith("local")) {
            return;
        }
        conf.setIfMissing("spark.ui.enabled", "false");
        conf.setIfMissing("spark.driver.port", "19500");
        conf.setIfMissing("spark.driver.blockManager.port", "19600");
        conf.setIfMissing("spark.blockManager.port", "19700");
        conf.setIfMissing("spark.port.maxRetries", "90");
        Matcher m = LOCAL_CLUSTER.matcher(chosen);
        if (m.matches()) {
            // The in-process workers build executor command lines as a distribution's would: from
            // $SPARK_HOME/jars (which may be empty) and the class path given here. Their logs go to $SPARK_HOME/work.
            String home = System.getenv("SPARK_HOME");
            if (home == null || !Files.isDirectory(Path.of(home, "jars"))) {
                throw new IllegalStateException("local-cluster in this JVM needs SPARK_HOME set to a directory with a jars/ "
                        + "folder (bin/fedlora-spark makes spark/target/spark-home); SPARK_HOME is " + home);
            }
            conf.setIfMissing("spark.executor.extraClassPath", System.getProperty("java.class.path"));
            conf.setIfMissing("spark.executor.memory", m.group(3) + "m");
            // Spark's launcher code wants to know the Scala version of a build it cannot find.
            conf.setExecutorEnv("SPARK_SCALA_VERSION", "2.13");
        }
    }

    private static void writeReport(Path file, List<BadClient> bad) throws IOException {
        List<String> lines = new ArrayList<>();
        for (BadClient b : bad) {
            lines.add(b.clientId() + "\t" + b.location() + "\t" + b.reason().replace('\t', ' '));
        }
        Files.write(file, lines, StandardCharsets.UTF_8);
    }

    static String oneLine(Throwable e) {
        String message = e.getMessage() == null ? e.toString() : e.getMessage();
        return message.lines().findFirst().orElse(message);
    }
}
