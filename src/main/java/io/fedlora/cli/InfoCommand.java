package io.fedlora.cli;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.ParentCommand;

/** {@code fedlora info}: Java version, the backends found and why any is missing, the one chosen. */
@Command(name = "info", mixinStandardHelpOptions = true,
        description = "Show the Java runtime, the compute backends found and why any is missing.")
final class InfoCommand implements Callable<Integer> {

    @ParentCommand
    Main main;

    @Override
    public Integer call() {
        var out = main.out;
        out.printf(Locale.ROOT, "java      %s (%s, %s)%n", Runtime.version(),
                System.getProperty("java.vendor"), System.getProperty("java.vm.name"));
        out.printf(Locale.ROOT, "machine   %s %s, %d CPUs, max heap %s%n", System.getProperty("os.name"),
                System.getProperty("os.arch"), Runtime.getRuntime().availableProcessors(),
                Progress.bytes(Runtime.getRuntime().maxMemory()));
        out.println("backends");
        for (Backends.Probe probe : Backends.probeAll()) {
            out.printf(Locale.ROOT, "  %-8s %-13s %s%n", probe.name(),
                    probe.available() ? "available" : "not available", Main.oneLine(probe.detail()));
        }
        try {
            Kernels sums = Backends.get(false), dense = Backends.get(true);
            out.printf(Locale.ROOT, "chosen    %s: %s (zero, replication, norm)%n", sums.name(), sums.description());
            out.printf(Locale.ROOT, "          %s: %s (svd, stack)%n", dense.name(), dense.description());
            out.printf(Locale.ROOT, "auto      %s%n", Backends.report().autoRule());
        } catch (RuntimeException | LinkageError e) {
            // A forced backend (FEDLORA_BACKEND / -Dfedlora.backend) that cannot run: say so, fail.
            out.println("chosen    none: " + Main.oneLine(e.getMessage()));
            return Main.FAILURE;
        }
        return Main.OK;
    }
}
