package io.fedlora.io;

import java.io.IOException;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.NoSuchFileException;
import java.util.Locale;

/** Short reasons for I/O failures, without the (possibly temporary) path the JDK puts in them. */
final class Messages {
    private Messages() {
    }

    /** The reason of {@code e} alone: "no space left on device", "permission denied", ... */
    static String reason(IOException e) {
        String reason = switch (e) {
            case NoSuchFileException f -> "no such file or directory";
            case AccessDeniedException f -> "permission denied";
            case FileSystemException f -> f.getReason() != null ? f.getReason() : f.getClass().getSimpleName();
            default -> e.getMessage() != null ? e.getMessage() : e.getClass().getSimpleName();
        };
        String line = reason.lines().findFirst().orElse("").strip();
        return line.isEmpty() ? e.getClass().getSimpleName() : line.substring(0, 1).toLowerCase(Locale.ROOT) + line.substring(1);
    }

    /** Whether {@code e} is the file system running out of space (ENOSPC) or quota (EDQUOT). */
    static boolean isNoSpace(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            String m = t.getMessage();
            if (m != null && (m.contains("No space left on device") || m.contains("Disk quota exceeded"))) {
                return true;
            }
        }
        return false;
    }
}
