package io.fedlora.io;

/** Lets tests in other packages ask what {@link OutputDir} can do here. */
public final class OutputDirProbe {
    private OutputDirProbe() {
    }

    /** Whether renameat2(RENAME_EXCHANGE) could be linked (native access on, a glibc that has it). */
    public static boolean exchangeAvailable() {
        return OutputDir.Exchange.available();
    }
}
