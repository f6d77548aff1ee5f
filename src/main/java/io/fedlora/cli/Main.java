package io.fedlora.cli;

import io.fedlora.InvalidUpdateException;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.OutputDir;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.NoSuchFileException;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParseResult;
import picocli.CommandLine.ScopeType;

/**
 * {@code bin/fedlora}: aggregate PEFT adapters of different ranks, truncate a global adapter,
 * report the backends, run the demo. Exit status 0 on success, 2 for bad usage, 1 for bad input
 * or failure, with a one-line error naming the file and the problem (a stack trace only with
 * {@code --verbose}).
 */
@Command(name = "fedlora",
        mixinStandardHelpOptions = true,
        versionProvider = Main.Version.class,
        description = "Server-side aggregation of rank-heterogeneous federated LoRA adapters "
                + "(zero, replication and norm-weighted padding).",
        subcommands = {AggregateCommand.class, TruncateCommand.class, InfoCommand.class, DemoCommand.class,
                FidelityCommand.class},
        synopsisSubcommandLabel = "COMMAND")
public final class Main implements Runnable {

    static final int OK = 0;
    static final int FAILURE = 1;
    static final int USAGE = 2;

    @Option(names = "--verbose", scope = ScopeType.INHERIT, description = "Print stack traces with errors.")
    boolean verbose;

    final PrintStream out;
    final PrintStream err;

    Main(PrintStream out, PrintStream err) {
        this.out = out;
        this.err = err;
    }

    @Override
    public void run() {
        throw new CommandLine.ParameterException(new CommandLine(this), "a command is required");
    }

    public static void main(String[] args) {
        quietUnlessVerbose(args);
        // SIGINT and SIGTERM run the shutdown hooks: remove what this run was writing (issue 9).
        Runtime.getRuntime().addShutdownHook(new Thread(OutputDir::abortAll, "fedlora-cleanup"));
        System.exit(run(args, System.out, System.err));
    }

    /**
     * A successful run prints its summary and nothing else (issue 9): the library's log lines
     * (which backend, why CUDA was skipped, a fallback warning) only with --verbose. Errors are
     * this class's one-line messages, not log lines.
     */
    static void quietUnlessVerbose(String[] args) {
        if (!java.util.Arrays.asList(args).contains("--verbose")) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel",
                    System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "error"));
            System.setProperty(io.fedlora.kernels.Log.QUIET_PROPERTY,
                    System.getProperty(io.fedlora.kernels.Log.QUIET_PROPERTY, "true"));
        }
    }

    /** Runs the command line and returns its exit status; never calls System.exit. */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        CommandLine cli = new CommandLine(new Main(out, err));
        cli.setOut(new PrintWriter(out, true));
        cli.setErr(new PrintWriter(err, true));
        cli.setExitCodeExceptionMapper(e -> FAILURE);
        // @FILE client lists are read by the aggregate command itself, so that '@' has one meaning
        // (a list of client paths) and a client whose name starts with '@' is written ./@name.
        cli.setExpandAtFiles(false);
        cli.setParameterExceptionHandler((e, arguments) -> {
            err.println("fedlora: " + oneLine(e.getMessage()));
            CommandLine failed = e.getCommandLine();
            err.println("Try '" + failed.getCommandSpec().qualifiedName() + " --help' for usage.");
            return USAGE;
        });
        cli.setExecutionExceptionHandler((e, failed, parseResult) -> {
            err.println("fedlora: " + describe(e));
            if (verbose(parseResult)) {
                e.printStackTrace(err);
            }
            return FAILURE;
        });
        try {
            return cli.execute(args);
        } catch (Error e) {
            // picocli passes only Exceptions to the handler above; errors (out of memory, a
            // broken class path) still get one line, and the stack trace with --verbose.
            err.println("fedlora: " + describe(e));
            if (java.util.Arrays.asList(args).contains("--verbose")) {
                e.printStackTrace(err);
            }
            return FAILURE;
        }
    }

    private static boolean verbose(ParseResult parseResult) {
        for (ParseResult p = parseResult; p != null; p = p.subcommand()) {
            if (p.hasMatchedOption("--verbose")) {
                return true;
            }
        }
        return false;
    }

    /** One line naming the file and the problem, whatever the exception. */
    static String describe(Throwable e) {
        String message = switch (e) {
            case InvalidFileException f -> f.getMessage();
            case ClientFailure c -> c.getMessage();
            case NoSuchFileException f -> f.getFile() + ": no such file";
            case AccessDeniedException f -> f.getFile() + ": permission denied";
            case FileSystemException f -> f.getFile() + ": " + (f.getReason() != null ? f.getReason() : f.getClass().getSimpleName());
            case InvalidUpdateException u -> u.getMessage();
            case OutOfMemoryError o -> "out of memory (" + o.getMessage() + "); give the JVM more heap, e.g. FEDLORA_JAVA_OPTS=-Xmx16g bin/fedlora ...";
            case IllegalArgumentException x -> x.getMessage();
            case UnsupportedOperationException x -> x.getMessage();
            case IllegalStateException x -> x.getMessage();
            default -> e.getClass().getSimpleName() + (e.getMessage() == null ? "" : ": " + e.getMessage());
        };
        return oneLine(message == null ? e.getClass().getSimpleName() : message);
    }

    /**
     * The first line, at most 500 characters: enough to name the file and the problem. (A native
     * loader's report, say from a CUDA probe, can run to dozens of lines.)
     */
    static String oneLine(String message) {
        if (message == null) {
            return "";
        }
        String line = message.strip().lines().findFirst().orElse("").strip();
        return line.length() > 500 ? line.substring(0, 500) + "..." : line;
    }

    /** An error that belongs to one client file: its message is already "FILE: PROBLEM". */
    static final class ClientFailure extends RuntimeException {
        ClientFailure(String message, Throwable cause) {
            super(message, cause);
        }
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            String version = Main.class.getPackage().getImplementationVersion();
            return new String[] {"fedlora " + (version == null ? "(development build)" : version)
                    + " on Java " + Runtime.version()};
        }
    }
}
