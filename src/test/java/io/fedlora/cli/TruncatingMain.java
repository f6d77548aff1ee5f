package io.fedlora.cli;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;

/**
 * The command line in a fresh JVM, with one file cut to 64 bytes after the clients are opened
 * and before they are read: {@code TruncatingMain FILE ARGS...}. A fresh JVM because a SIGBUS in
 * C2-compiled kernel code (after other tests warmed the loops up) kills the JVM instead of
 * raising InternalError (see CliSafetyTest#aFileTruncatedDuringTheRunIsNamed).
 */
public final class TruncatingMain {
    private TruncatingMain() {
    }

    public static void main(String[] args) {
        Main.quietUnlessVerbose(args);
        Path victim = Path.of(args[0]);
        AggregateCommand.afterOpen = open -> {
            try (FileChannel ch = FileChannel.open(victim, StandardOpenOption.WRITE)) {
                ch.truncate(64);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        };
        System.exit(Main.run(Arrays.copyOfRange(args, 1, args.length), System.out, System.err));
    }
}
