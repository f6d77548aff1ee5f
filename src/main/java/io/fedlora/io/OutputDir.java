package io.fedlora.io;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.VarHandle;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.file.DirectoryNotEmptyException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * An output adapter directory that is published whole or not at all, so that nothing the user
 * had is lost (issue 9).
 *
 * <p>Everything is written into {@code .NAME.fedlora-tmp-TOKEN} beside {@code NAME}, synced, and
 * then put in place:
 * <ul>
 * <li>no {@code NAME}, or an empty directory: one {@code rename(2)};
 * <li>an existing adapter ({@code --force}): {@code renameat2(RENAME_EXCHANGE)} swaps the two
 *     directories in one step, so the path holds the old adapter or the new one at every instant;
 *     the old one, now under the temporary name, is then removed. Where the file system cannot
 *     exchange (or {@code -Dfedlora.io.exchange=false}), the old directory is renamed aside to
 *     {@code .NAME.fedlora-tmp-TOKEN.old} and the new one renamed in: for the microseconds between
 *     the two renames {@code NAME} is absent, and a crash there leaves the old adapter under the
 *     {@code .old} name, which the next run (or this run's shutdown hook) renames back.
 * </ul>
 * A lock file {@code .NAME.fedlora-tmp-TOKEN.lock}, created first and locked while the run lives,
 * marks the temporary directory as this run's. A run that dies (kill -9) leaves them behind under
 * these recognisable names; the next run into the same parent removes every such leftover whose
 * lock nobody holds, and nothing else. An interrupted run (SIGINT, SIGTERM) removes its own from a
 * shutdown hook ({@link #abortAll()}).
 */
public final class OutputDir implements AutoCloseable {

    static final String MARK = ".fedlora-tmp-";
    /** {@code .NAME.fedlora-tmp-TOKEN}, optionally {@code .lock} or {@code .old}. */
    private static final Pattern LEFTOVER = Pattern.compile("\\.(.+)\\.fedlora-tmp-([0-9a-f]{16})(\\.lock|\\.old)?");

    /** The runs in progress in this JVM, for the shutdown hook. */
    private static final Set<OutputDir> LIVE = new LinkedHashSet<>();

    private enum State { WRITING, PUBLISHED, CLOSED }

    private final Path target;
    private final String display;
    private final boolean replace;
    private final Path temp;
    private final Path lockFile;
    private final Path aside;
    private final FileChannel lockChannel;
    private State state = State.WRITING;

    private OutputDir(Path target, String display, boolean replace, String token) throws IOException {
        this.target = target;
        this.display = display;
        this.replace = replace;
        Path parent = target.getParent();
        String base = "." + target.getFileName() + MARK + token;
        this.temp = parent.resolve(base);
        this.lockFile = parent.resolve(base + ".lock");
        this.aside = parent.resolve(base + ".old");
        this.lockChannel = FileChannel.open(lockFile, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        try {
            lockChannel.lock();
            Files.createDirectory(temp);
        } catch (IOException | RuntimeException e) {
            lockChannel.close();
            Files.deleteIfExists(lockFile);
            throw e;
        }
    }

    /**
     * What {@code out} may be replaced with: null if it is absent or an empty directory, else a
     * one-line reason it cannot be written (without {@code force}) or never can be.
     */
    public static String refusal(Path out, boolean force) throws IOException {
        Path target = out.toAbsolutePath().normalize();
        Path parent = target.getParent();
        if (parent == null || target.getFileName() == null) {
            return "is the root directory";
        }
        if (!Files.isDirectory(parent)) {
            return Files.exists(parent) ? "its parent is not a directory" : "its parent directory does not exist";
        }
        if (Files.isSymbolicLink(target)) {
            return "is a symbolic link; give the directory it points to, or another name";
        }
        if (!Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
            return null;
        }
        if (!Files.isDirectory(target, LinkOption.NOFOLLOW_LINKS)) {
            return "exists and is not a directory";
        }
        if (isEmptyDirectory(target)) {
            return null;
        }
        boolean adapter = Files.exists(target.resolve(PeftAdapter.WEIGHTS), LinkOption.NOFOLLOW_LINKS)
                || Files.exists(target.resolve(PeftAdapter.CONFIG), LinkOption.NOFOLLOW_LINKS);
        if (!adapter) {
            return "is a non-empty directory that holds no adapter; fedlora replaces only an adapter directory, "
                    + "even with --force";
        }
        return force ? null : "exists and is not empty; --force replaces it (as a whole)";
    }

    /**
     * Starts an output: removes dead runs' leftovers beside {@code out}, then creates this run's
     * lock file and temporary directory. Nothing at {@code out} changes until {@link #publish()}.
     *
     * @param display {@code -o} as the user gave it, for messages
     */
    public static OutputDir create(Path out, String display, boolean force) throws IOException {
        String refusal = refusal(out, force);
        if (refusal != null) {
            throw new InvalidFileException(display, refusal);
        }
        Path target = out.toAbsolutePath().normalize();
        try {
            removeLeftovers(target.getParent());
        } catch (IOException e) {
            throw new InvalidFileException(display, "cannot remove an earlier run's leftovers beside it: "
                    + Messages.reason(e), e);
        }
        String token = HexFormat.of().toHexDigits(ThreadLocalRandom.current().nextLong());
        OutputDir dir;
        try {
            dir = new OutputDir(target, display, force, token);
        } catch (IOException e) {
            throw new InvalidFileException(display, "cannot create a temporary directory beside it: "
                    + Messages.reason(e), e);
        }
        synchronized (LIVE) {
            LIVE.add(dir);
        }
        return dir;
    }

    /** Where to write the files; nothing else may be written there. */
    public Path directory() {
        return temp;
    }

    /** The output as the user named it. */
    public String display() {
        return display;
    }

    /**
     * Syncs the temporary directory and puts it at the output path (see the class comment).
     * Atomic against {@link #abort()}: a signal that arrives now waits for this to finish.
     */
    public synchronized void publish() throws IOException {
        if (state != State.WRITING) {
            throw new IllegalStateException(display + ": output already " + state.name().toLowerCase());
        }
        syncTree(temp);
        Path parent = target.getParent();
        boolean exists = Files.exists(target, LinkOption.NOFOLLOW_LINKS);
        if (exists && !isEmptyDirectory(target)) {
            if (!replace) {
                throw new InvalidFileException(display, "was created by someone else while this run was writing; "
                        + "left it alone");
            }
            if (!exchangeEnabled() || !Exchange.exchange(temp, target)) {
                Files.move(target, aside, StandardCopyOption.ATOMIC_MOVE);
                try {
                    Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
                } catch (IOException | RuntimeException e) {
                    Files.move(aside, target, StandardCopyOption.ATOMIC_MOVE);
                    throw e;
                }
                state = State.PUBLISHED;
                syncDirectory(parent);
                deleteTree(aside);
                return;
            }
            // temp now holds the old adapter.
            state = State.PUBLISHED;
            syncDirectory(parent);
            deleteTree(temp);
            return;
        }
        // rename(2) replaces an empty directory in one step.
        Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
        state = State.PUBLISHED;
        syncDirectory(parent);
    }

    /** Removes what this run made and has not published; the published output stays. */
    public synchronized void abort() {
        if (state == State.CLOSED) {
            return;
        }
        try {
            if (Files.exists(aside, LinkOption.NOFOLLOW_LINKS) && !Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
                // Interrupted between the two renames of the fallback: put the old adapter back.
                Files.move(aside, target, StandardCopyOption.ATOMIC_MOVE);
            }
            deleteTree(aside);
            // A writer still running may be creating files in it: try a few times.
            for (int attempt = 0; ; attempt++) {
                try {
                    deleteTree(temp);
                    break;
                } catch (DirectoryNotEmptyException e) {
                    if (attempt == 20) {
                        throw e;
                    }
                }
            }
        } catch (IOException e) {
            // The lock file stays unlocked: the next run into this parent finishes the job.
            return;
        } finally {
            state = State.CLOSED;
            synchronized (LIVE) {
                LIVE.remove(this);
            }
        }
        releaseLock();
    }

    /** Ends the run: removes the temporary directory if it was not published, and the lock file. */
    @Override
    public void close() {
        abort();
    }

    private void releaseLock() {
        try {
            Files.deleteIfExists(lockFile);
            lockChannel.close();
        } catch (IOException e) {
            // Left for the next run's cleanup, which finds it unlocked.
        }
    }

    /** For the shutdown hook: aborts every output of this JVM still in progress. */
    public static void abortAll() {
        List<OutputDir> live;
        synchronized (LIVE) {
            live = new ArrayList<>(LIVE);
        }
        live.forEach(OutputDir::abort);
    }

    /**
     * Removes the leftovers of dead runs in {@code parent}: every {@code .NAME.fedlora-tmp-TOKEN}
     * group whose lock file is absent or not locked by a live process. An {@code .old} directory
     * whose {@code NAME} is missing is renamed back to {@code NAME}.
     */
    static void removeLeftovers(Path parent) throws IOException {
        Set<String> tokens = new LinkedHashSet<>();
        try (Stream<Path> entries = Files.list(parent)) {
            for (Path p : entries.toList()) {
                Matcher m = LEFTOVER.matcher(p.getFileName().toString());
                if (m.matches()) {
                    tokens.add("." + m.group(1) + MARK + m.group(2));
                }
            }
        }
        for (String base : tokens) {
            Path lock = parent.resolve(base + ".lock");
            FileChannel channel = null;
            FileLock held = null;
            try {
                if (Files.exists(lock, LinkOption.NOFOLLOW_LINKS)) {
                    try {
                        channel = FileChannel.open(lock, StandardOpenOption.WRITE);
                        held = channel.tryLock();
                    } catch (OverlappingFileLockException | NoSuchFileException alive) {
                        // This JVM's own run in progress, or one that just finished.
                        continue;
                    }
                    if (held == null) {
                        continue; // another process holds it: a live run
                    }
                }
                Matcher m = LEFTOVER.matcher(base);
                if (!m.matches()) {
                    continue;
                }
                Path name = parent.resolve(m.group(1));
                Path old = parent.resolve(base + ".old");
                if (Files.exists(old, LinkOption.NOFOLLOW_LINKS) && !Files.exists(name, LinkOption.NOFOLLOW_LINKS)) {
                    Files.move(old, name, StandardCopyOption.ATOMIC_MOVE);
                }
                deleteTree(old);
                deleteTree(parent.resolve(base));
                Files.deleteIfExists(lock);
            } finally {
                if (channel != null) {
                    channel.close();
                }
            }
        }
    }

    private static boolean exchangeEnabled() {
        return !"false".equals(System.getProperty("fedlora.io.exchange"));
    }

    static boolean isEmptyDirectory(Path dir) throws IOException {
        try (Stream<Path> entries = Files.list(dir)) {
            return entries.findAny().isEmpty();
        }
    }

    /** fsync of every file in {@code dir} (one level) and of the directory itself. */
    private static void syncTree(Path dir) throws IOException {
        try (Stream<Path> entries = Files.list(dir)) {
            for (Path p : entries.toList()) {
                if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) {
                    try (FileChannel c = FileChannel.open(p, StandardOpenOption.READ)) {
                        c.force(true);
                    }
                }
            }
        }
        syncDirectory(dir);
    }

    static void syncDirectory(Path dir) throws IOException {
        try (FileChannel c = FileChannel.open(dir, StandardOpenOption.READ)) {
            c.force(true);
        } catch (IOException e) {
            // Some file systems cannot open or sync a directory; the renames are still atomic.
        }
    }

    static void deleteTree(Path root) throws IOException {
        if (!Files.exists(root, LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        } catch (NoSuchFileException gone) {
            // Removed under us (a concurrent abort): what we wanted.
        }
    }

    /** Linux renameat2(RENAME_EXCHANGE) through the FFM linker, when native access is enabled. */
    static final class Exchange {
        private static final int AT_FDCWD = -100;
        private static final int RENAME_EXCHANGE = 2;
        private static final MethodHandle RENAMEAT2;
        private static final StructLayout CAPTURE;
        private static final VarHandle ERRNO;

        static {
            MethodHandle handle = null;
            StructLayout capture = null;
            VarHandle errno = null;
            if (Exchange.class.getModule().isNativeAccessEnabled()) {
                try {
                    Linker linker = Linker.nativeLinker();
                    capture = Linker.Option.captureStateLayout();
                    errno = capture.varHandle(java.lang.foreign.MemoryLayout.PathElement.groupElement("errno"));
                    handle = linker.defaultLookup().find("renameat2").map(symbol -> linkRenameat2(linker, symbol))
                            .orElse(null);
                } catch (Throwable unavailable) {
                    handle = null;
                }
            }
            RENAMEAT2 = handle;
            CAPTURE = capture;
            ERRNO = errno;
        }

        @SuppressWarnings("restricted") // only when native access is enabled for this module
        private static MethodHandle linkRenameat2(Linker linker, MemorySegment symbol) {
            return linker.downcallHandle(symbol, FunctionDescriptor.of(ValueLayout.JAVA_INT,
                    ValueLayout.JAVA_INT, ValueLayout.ADDRESS, ValueLayout.JAVA_INT, ValueLayout.ADDRESS,
                    ValueLayout.JAVA_INT), Linker.Option.captureCallState("errno"));
        }

        static boolean available() {
            return RENAMEAT2 != null;
        }

        /**
         * Swaps two paths atomically; false where this system or file system cannot (then
         * nothing changed), an IOException for any other failure.
         */
        static boolean exchange(Path a, Path b) throws IOException {
            if (RENAMEAT2 == null) {
                return false;
            }
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment state = arena.allocate(CAPTURE);
                int rc = (int) RENAMEAT2.invokeExact(state, AT_FDCWD, arena.allocateFrom(a.toString()),
                        AT_FDCWD, arena.allocateFrom(b.toString()), RENAME_EXCHANGE);
                if (rc == 0) {
                    return true;
                }
                int errno = (int) ERRNO.get(state, 0L);
                // EINVAL (flag not supported by this file system), ENOSYS (old kernel), EOPNOTSUPP/ENOTSUP.
                if (errno == 22 || errno == 38 || errno == 95) {
                    return false;
                }
                throw new IOException("renameat2 failed with errno " + errno);
            } catch (IOException | RuntimeException | Error e) {
                throw e;
            } catch (Throwable t) {
                throw new IllegalStateException(t);
            }
        }
    }
}
