package io.fedlora.cli;

import static io.fedlora.cli.CliTest.MODULES;
import static io.fedlora.cli.CliTest.cli;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Issue 9 case by case, through the command line: exit status, the one-line message, and the
 * file system afterwards (inputs byte for byte as they were, no temporary or lock file left).
 */
class CliSafetyTest {

    @TempDir
    Path tmp;

    Path clients;
    Path outs;

    @BeforeEach
    void dirs() throws IOException {
        clients = Files.createDirectory(tmp.resolve("clients"));
        outs = Files.createDirectory(tmp.resolve("out"));
    }

    // ---- helpers -------------------------------------------------------------------------------

    Path client(String name, int[] ranks, long seed) throws Exception {
        Path dir = clients.resolve(name);
        int r = Math.max(ranks[0], ranks[1]);
        PeftAdapter.write(dir, CliTest.tensors(ranks, DType.F32, seed), null, CliTest.config(r, 16, false),
                Map.of("format", "pt"), r);
        return dir;
    }

    List<Path> three() throws Exception {
        return List.of(client("phone", new int[] {2, 2}, 1), client("laptop", new int[] {4, 4}, 2),
                client("tablet", new int[] {3, 3}, 3));
    }

    /** Every file and link under {@code root}: relative path -> bytes (a link: its target). */
    static Map<String, String> snapshot(Path root) throws IOException {
        Map<String, String> files = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.toList()) {
                String key = root.relativize(p).toString();
                if (Files.isSymbolicLink(p)) {
                    files.put(key, "-> " + Files.readSymbolicLink(p));
                } else if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) {
                    files.put(key, java.util.HexFormat.of().formatHex(
                            java.security.MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(p))));
                } else if (Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS)) {
                    files.put(key, "dir");
                } else {
                    files.put(key, "special");
                }
            }
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
        return files;
    }

    static void assertNoLeftovers(Path dir) throws IOException {
        try (Stream<Path> entries = Files.list(dir)) {
            List<String> left = entries.map(p -> p.getFileName().toString()).filter(n -> n.contains(".fedlora-tmp-")).toList();
            assertEquals(List.of(), left, "no temporary or lock file left in " + dir);
        }
    }

    /** Runs the CLI; asserts the status, one line naming what it must, and the inputs untouched. */
    CliTest.Run refused(int status, String[] mustSay, String... args) throws Exception {
        Map<String, String> before = snapshot(tmp);
        CliTest.Run run = cli(args);
        assertEquals(status, run.status(), run.err());
        String line = run.err().strip();
        assertTrue(line.startsWith("fedlora: "), line);
        if (status == 1) {
            assertEquals(1, line.lines().count(), "one line: " + line);
        }
        for (String s : mustSay) {
            assertTrue(line.contains(s), "'" + line + "' should say '" + s + "'");
        }
        assertFalse(line.contains(".fedlora-tmp-"), "never the temporary path: " + line);
        assertEquals(before, snapshot(tmp), "nothing changed on disk");
        return run;
    }

    static String[] says(String... s) {
        return s;
    }

    static String[] aggregate(Path out, List<Path> clients, String... options) {
        List<String> all = new ArrayList<>(List.of("aggregate", "--strategy", "replication"));
        all.addAll(List.of(options));
        all.addAll(List.of("-o", out.toString()));
        clients.forEach(c -> all.add(c.toString()));
        return all.toArray(String[]::new);
    }

    // ---- 1. nothing the user had is lost ---------------------------------------------------------

    @Test
    void outputThatIsContainsOrLiesInsideAnInputIsRefused() throws Exception {
        List<Path> c = three();
        refused(2, says("-o " + c.get(0), "is the input"), aggregate(c.get(0), c));
        refused(2, says("lies inside the input " + c.get(1)), aggregate(c.get(1).resolve("sub"), c, "--force"));
        refused(2, says("contains the input"), aggregate(clients, c, "--force"));
        refused(2, says("is the input"), "truncate", "--rank", "1", c.get(0).toString(), "-o", c.get(0).toString());
        // Through a link: the real paths are compared.
        Path link = Files.createSymbolicLink(outs.resolve("link"), c.get(2));
        refused(2, says("is the input"), aggregate(link, c, "--force"));
        // A client whose weights file is a link into the output: replacing the output would destroy it.
        Path existing = outs.resolve("existing");
        PeftAdapter.write(existing, CliTest.tensors(new int[] {2, 2}, DType.F32, 9), null, CliTest.config(2, 16, false),
                Map.of(), 2);
        Path linked = Files.createDirectory(clients.resolve("linked"));
        Files.createSymbolicLink(linked.resolve(PeftAdapter.WEIGHTS), existing.resolve(PeftAdapter.WEIGHTS));
        refused(2, says("contains the input " + linked.resolve(PeftAdapter.WEIGHTS)),
                aggregate(existing, List.of(c.get(0), linked), "--force"));
    }

    @Test
    void aClientGivenTwiceIsRefused() throws Exception {
        List<Path> c = three();
        refused(2, says("client 3", "same file as client 1"), aggregate(outs.resolve("g"), List.of(c.get(0), c.get(1), c.get(0))));
        Path alias = Files.createSymbolicLink(clients.resolve("alias"), c.get(1));
        refused(2, says("client 2 (" + alias + ")", "same file as client 1"), aggregate(outs.resolve("g"), List.of(c.get(1), alias)));
        Path hard = Files.createLink(tmp.resolve("hard.safetensors"), c.get(2).resolve(PeftAdapter.WEIGHTS));
        refused(2, says("same file"), aggregate(outs.resolve("g"), List.of(c.get(2), hard)));
    }

    @Test
    void anExistingOutputNeedsForceAndIsThenReplacedWhole() throws Exception {
        List<Path> c = three();
        Path out = outs.resolve("global");
        assertEquals(0, cli(aggregate(out, c.subList(0, 2))).status());
        Files.writeString(out.resolve("README.md"), "old notes");
        Map<String, String> old = snapshot(out);
        refused(2, says("-o " + out, "exists and is not empty", "--force"), aggregate(out, c));
        assertEquals(old, snapshot(out));

        CliTest.Run run = cli(aggregate(out, c, "--force"));
        assertEquals(0, run.status(), run.err());
        assertEquals(List.of(PeftAdapter.CONFIG, PeftAdapter.WEIGHTS), names(out), "replaced as a whole");
        Path fresh = outs.resolve("fresh");
        assertEquals(0, cli(aggregate(fresh, c)).status());
        assertEquals(Files.mismatch(fresh.resolve(PeftAdapter.WEIGHTS), out.resolve(PeftAdapter.WEIGHTS)), -1L);
        assertNoLeftovers(outs);

        // The two-rename fallback (file systems without renameat2 exchange) gives the same result.
        System.setProperty("fedlora.io.exchange", "false");
        try {
            assertEquals(0, cli(aggregate(out, c.subList(1, 3), "--force")).status());
        } finally {
            System.clearProperty("fedlora.io.exchange");
        }
        assertEquals(List.of(PeftAdapter.CONFIG, PeftAdapter.WEIGHTS), names(out));
        assertNoLeftovers(outs);

        // --force never replaces a directory that is not an adapter, nor a file.
        Path notes = Files.createDirectory(outs.resolve("notes"));
        Files.writeString(notes.resolve("todo.txt"), "keep");
        refused(2, says("holds no adapter"), aggregate(notes, c, "--force"));
        Path file = Files.writeString(outs.resolve("file"), "x");
        refused(2, says("is not a directory"), aggregate(file, c, "--force"));
        refused(2, says("parent directory does not exist"), aggregate(outs.resolve("no/such/dir"), c));
    }

    /** At every instant the output path holds the old adapter or the new one (the exchange). */
    @Test
    void aReaderAlwaysFindsACompleteAdapterWhileItIsReplaced() throws Exception {
        assumeTrue(io.fedlora.io.OutputDirProbe.exchangeAvailable(), "renameat2 exchange not available here");
        List<Path> c = three();
        Path out = outs.resolve("global");
        assertEquals(0, cli(aggregate(out, c)).status());
        java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
        java.util.concurrent.atomic.AtomicLong misses = new java.util.concurrent.atomic.AtomicLong();
        java.util.concurrent.atomic.AtomicLong looks = new java.util.concurrent.atomic.AtomicLong();
        Thread reader = new Thread(() -> {
            while (!stop.get()) {
                looks.incrementAndGet();
                if (!Files.exists(out.resolve(PeftAdapter.WEIGHTS)) || !Files.exists(out.resolve(PeftAdapter.CONFIG))) {
                    misses.incrementAndGet();
                }
            }
        });
        reader.start();
        try {
            for (int i = 0; i < 40; i++) {
                assertEquals(0, cli(aggregate(out, c, "--force")).status());
            }
        } finally {
            stop.set(true);
            reader.join();
        }
        assertTrue(looks.get() > 1000, "the reader looked " + looks.get() + " times");
        assertEquals(0, misses.get(), "times the reader found no complete adapter at -o");
    }

    /**
     * The new adapter is on disk before it is put in place: under strace, both files and the
     * temporary directory are fsync'ed before the rename (or exchange) that publishes them.
     * Skipped where strace is missing or may not trace.
     */
    @Test
    void everythingIsSyncedBeforeItIsPublished() throws Exception {
        List<Path> c = three();
        Path out = outs.resolve("global");
        assertEquals(0, cli(aggregate(out, c)).status());
        Path trace = tmp.resolve("strace.txt");
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> command = new ArrayList<>(List.of("strace", "-f", "-y", "-qq", "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", trace.toString(), java, "--add-modules",
                "jdk.incubator.vector", "--enable-native-access=ALL-UNNAMED", "-cp", System.getProperty("java.class.path"),
                Main.class.getName()));
        command.addAll(List.of(aggregate(out, c, "--force")));
        Process p;
        try {
            p = new ProcessBuilder(command).redirectErrorStream(true).start();
        } catch (IOException e) {
            assumeTrue(false, "no strace here: skipping the fsync order check");
            return;
        }
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        int exit = p.waitFor();
        assumeTrue(exit == 0 || !output.contains("ptrace"), "strace may not trace here: " + output);
        assertEquals(0, exit, output);
        List<String> calls = Files.readAllLines(trace).stream()
                .filter(l -> l.contains("fedlora-tmp-") && !l.contains("unfinished") && !l.contains("resumed")).toList();
        int publish = -1;
        for (int i = 0; i < calls.size(); i++) {
            if (calls.get(i).contains("rename") && calls.get(i).contains("\"" + out + "\"")) {
                publish = i;
                break;
            }
        }
        assertTrue(publish > 0, "a rename onto -o: " + calls);
        List<String> before = calls.subList(0, publish);
        for (String synced : List.of("/" + PeftAdapter.WEIGHTS + ">", "/" + PeftAdapter.CONFIG + ">")) {
            assertTrue(before.stream().anyMatch(l -> l.contains("fsync(") && l.contains(synced)),
                    synced + " synced before publishing: " + before);
        }
        assertTrue(before.stream().anyMatch(l -> l.contains("fsync(") && l.matches(".*fedlora-tmp-[0-9a-f]{16}>\\).*")),
                "the temporary directory synced before publishing: " + before);
    }

    @Test
    void deadRunsLeftoversAreRemovedAndNothingElse() throws Exception {
        List<Path> c = three();
        // What kill -9 leaves: a temporary directory and its unlocked lock file.
        Path deadTemp = Files.createDirectory(outs.resolve(".global.fedlora-tmp-0123456789abcdef"));
        Files.write(deadTemp.resolve(PeftAdapter.WEIGHTS), new byte[1000]);
        Files.createFile(outs.resolve(".global.fedlora-tmp-0123456789abcdef.lock"));
        // Killed between the fallback's two renames: the old adapter aside, its name free.
        Path aside = Files.createDirectory(outs.resolve(".kept.fedlora-tmp-00000000000000aa.old"));
        Files.writeString(aside.resolve(PeftAdapter.CONFIG), "{}");
        // Not ours: similar names, and a live run's temporary directory (its lock held by another process).
        Files.writeString(outs.resolve(".global.fedlora-tmp-notours"), "user file");
        Files.writeString(outs.resolve("unrelated.txt"), "user file");
        Path live = Files.createDirectory(outs.resolve(".other.fedlora-tmp-fedcba9876543210"));
        Path liveLock = outs.resolve(".other.fedlora-tmp-fedcba9876543210.lock");
        Files.createFile(liveLock);
        Process holder = null;
        if (python()) {
            holder = new ProcessBuilder("python3", "-c", "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\n"
                    + "fcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(60)", liveLock.toString())
                    .redirectErrorStream(true).start();
            assertEquals("locked", new String(holder.getInputStream().readNBytes(6), StandardCharsets.UTF_8));
        }
        try {
            CliTest.Run run = cli(aggregate(outs.resolve("new"), c));
            assertEquals(0, run.status(), run.err());
        } finally {
            if (holder != null) {
                holder.destroyForcibly().waitFor();
            }
        }
        List<String> left = names(outs);
        assertFalse(left.contains(deadTemp.getFileName().toString()), left.toString());
        assertFalse(left.contains(".global.fedlora-tmp-0123456789abcdef.lock"), left.toString());
        assertTrue(left.contains("kept") && Files.exists(outs.resolve("kept").resolve(PeftAdapter.CONFIG)),
                "the old adapter renamed back: " + left);
        assertTrue(left.contains(".global.fedlora-tmp-notours") && left.contains("unrelated.txt"), left.toString());
        if (holder != null) {
            assertTrue(Files.isDirectory(live), "a live run's temporary directory stays: " + left);
        }
    }

    // ---- signals: a child JVM writing a large output ---------------------------------------------

    /** Clients small on disk whose output at --rank 2048 is 192 MB: a write long enough to interrupt. */
    List<Path> bigOutputClients() throws Exception {
        List<Path> paths = new ArrayList<>();
        for (int k = 0; k < 2; k++) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            SplittableRandom random = new SplittableRandom(k);
            for (int m = 0; m < 3; m++) {
                String module = "base_model.model.layers." + m + ".q_proj";
                t.put(module + ".lora_A.weight", Tensor.of(CliTest.values(random, 8 * 4096), 8, 4096));
                t.put(module + ".lora_B.weight", Tensor.of(CliTest.values(random, 4096 * 8), 4096, 8));
            }
            Path dir = clients.resolve("big" + k);
            PeftAdapter.write(dir, t, null, CliTest.config(8, 16, false), Map.of(), 8);
            paths.add(dir);
        }
        return paths;
    }

    static Process child(Path log, String... args) throws IOException {
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> command = new ArrayList<>(List.of(java, "--add-modules", "jdk.incubator.vector",
                "--enable-native-access=ALL-UNNAMED", "-cp", System.getProperty("java.class.path"), Main.class.getName()));
        command.addAll(List.of(args));
        return new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(log.toFile()).start();
    }

    /** Waits until the child is writing the weights into its temporary directory (a few MB in). */
    static void awaitWriting(Process p, Path parent, Path log) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (System.nanoTime() < deadline) {
            assertTrue(p.isAlive(), "the child ended before it could be interrupted: " + Files.readString(log));
            try (Stream<Path> entries = Files.list(parent)) {
                for (Path e : entries.toList()) {
                    if (e.getFileName().toString().contains(".fedlora-tmp-") && Files.isDirectory(e)) {
                        try (Stream<Path> inside = Files.list(e)) {
                            for (Path f : inside.toList()) {
                                if (Files.size(f) > 8_000_000) {
                                    return;
                                }
                            }
                        } catch (IOException gone) {
                            // published or removed meanwhile
                        }
                    }
                }
            }
            Thread.sleep(2);
        }
        throw new AssertionError("the child never got to writing: " + Files.readString(log));
    }

    @org.junit.jupiter.params.ParameterizedTest(name = "SIG{0}")
    @org.junit.jupiter.params.provider.ValueSource(strings = {"TERM", "INT"})
    void aSignalWhileWritingRemovesWhatTheRunCreatedAndKeepsTheOldOutput(String signal) throws Exception {
        List<Path> c = bigOutputClients();
        Path out = outs.resolve("global");
        assertEquals(0, cli(aggregate(out, c)).status());
        Map<String, String> before = snapshot(tmp);
        Path log = tmp.resolve("child.log");
        Process p = child(log, aggregate(out, c, "--force", "--rank", "2048"));
        awaitWriting(p, outs, log);
        assertEquals(0, new ProcessBuilder("kill", "-" + signal, String.valueOf(p.pid())).start().waitFor());
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        Files.delete(log);
        assertEquals(signal.equals("TERM") ? 143 : 130, p.exitValue(), "ended by SIG" + signal);
        assertEquals(before, snapshot(tmp), "old output and inputs as they were, nothing added");
    }

    @Test
    void killDashNineLeavesRecognisableLeftoversThatTheNextRunRemoves() throws Exception {
        List<Path> c = bigOutputClients();
        Path out = outs.resolve("global");
        Path log = tmp.resolve("child.log");
        Process p = child(log, aggregate(out, c, "--rank", "2048"));
        awaitWriting(p, outs, log);
        p.destroyForcibly(); // SIGKILL: no hook runs
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        List<String> left = names(outs);
        assertTrue(left.stream().anyMatch(n -> n.matches("\\.global\\.fedlora-tmp-[0-9a-f]{16}")), left.toString());
        assertTrue(left.stream().anyMatch(n -> n.matches("\\.global\\.fedlora-tmp-[0-9a-f]{16}\\.lock")), left.toString());
        assertFalse(left.contains("global"));
        Map<String, String> inputs = snapshot(clients);
        CliTest.Run run = cli(aggregate(outs.resolve("next"), c));
        assertEquals(0, run.status(), run.err());
        assertEquals(List.of("next"), names(outs), "the dead run's leftovers removed");
        assertEquals(inputs, snapshot(clients));
    }

    @Test
    void aFullFileSystemNamesTheOutputAndLeavesNothing() throws Exception {
        Path small = Files.createDirectory(tmp.resolve("small"));
        Process mount = new ProcessBuilder("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small.toString())
                .redirectErrorStream(true).start();
        String why = new String(mount.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assumeTrue(mount.waitFor() == 0, "cannot mount a 1 MB tmpfs here (" + why.strip() + "): skipping the disk-full case");
        try {
            Map<String, Tensor> t = new LinkedHashMap<>();
            SplittableRandom random = new SplittableRandom(4);
            t.put("base_model.model.fc.lora_A.weight", Tensor.of(CliTest.values(random, 16 * 1024), 16, 1024));
            t.put("base_model.model.fc.lora_B.weight", Tensor.of(CliTest.values(random, 1024 * 16), 1024, 16));
            Path client = clients.resolve("c");
            PeftAdapter.write(client, t, null, CliTest.config(16, 16, false), Map.of(), 16);
            Path out = small.resolve("global");
            // 512 x 2048 floats: 4 MB into 1 MB.
            refused(1, says(out + ": no space left on device", "nothing was written"),
                    aggregate(out, List.of(client), "--rank", "512"));
            assertEquals(List.of(), names(small), "nothing left on the full file system");
        } finally {
            new ProcessBuilder("umount", small.toString()).start().waitFor();
        }
    }

    // ---- 3. no silent surprises -----------------------------------------------------------------

    @Test
    void normRefusesWeights() throws Exception {
        List<Path> c = three();
        refused(2, says("--strategy norm", "does not take --weights"), "aggregate", "--strategy", "norm",
                "--weights", "1,0,1", "-o", outs.resolve("g").toString(), c.get(0).toString(), c.get(1).toString(),
                c.get(2).toString());
    }

    @Test
    void halfPrecisionOverflowIsRefusedNamingTheTensorAndValue() throws Exception {
        Map<String, Tensor> t = CliTest.tensors(new int[] {2, 2}, DType.F32, 7);
        String key = MODULES[1] + ".lora_B.weight";
        float[] b = t.get(key).toFloatArray();
        b[3] = 70000f;
        t.put(key, Tensor.of(b, t.get(key).shape()));
        Path big = clients.resolve("big");
        PeftAdapter.write(big, t, null, CliTest.config(2, 16, false), Map.of(), 2);
        Path out = outs.resolve("g");
        refused(1, says(out.toString(), "'" + key + "'", "70000", "65504", "nothing was written"),
                aggregate(out, List.of(big), "--dtype", "f16"));
        assertEquals(0, cli(aggregate(out, List.of(big), "--dtype", "bf16")).status(), "bf16 holds 70000");
        // bfloat16 rounds float32 values near its limit up to infinity.
        b[3] = 3.4e38f;
        t.put(key, Tensor.of(b, t.get(key).shape()));
        PeftAdapter.write(big, t, null, CliTest.config(2, 16, false), Map.of(), 2);
        Path out2 = outs.resolve("g2");
        refused(1, says(out2.toString(), "'" + key + "'", "3.4E38", "3.39e38"), aggregate(out2, List.of(big), "--dtype", "bf16"));
    }

    /** Progress is drawn by default when stderr is a terminal (util-linux script gives the child one). */
    @Test
    void progressIsDrawnOnATerminalByDefault() throws Exception {
        boolean script;
        try {
            script = new ProcessBuilder("script", "--version").redirectErrorStream(true).start().waitFor() == 0;
        } catch (IOException e) {
            script = false;
        }
        assumeTrue(script, "no util-linux script to give the child a terminal: skipping");
        List<Path> c = three();
        String java = ProcessHandle.current().info().command().orElseThrow();
        StringBuilder command = new StringBuilder("'" + java + "' --add-modules jdk.incubator.vector "
                + "--enable-native-access=ALL-UNNAMED -cp '" + System.getProperty("java.class.path") + "' "
                + Main.class.getName());
        for (String a : aggregate(outs.resolve("g"), c)) {
            command.append(" '").append(a).append("'");
        }
        Process p = new ProcessBuilder("script", "-qec", command.toString(), "/dev/null").redirectErrorStream(true).start();
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), output);
        assertTrue(output.contains("\rfedlora: read 3/3 clients"), output);
    }

    // ---- 4. messages that name the file and the problem ------------------------------------------

    @Test
    void whatIsNamedAdapterModelSafetensorsIsReportedAsWhatItIs() throws Exception {
        Path good = client("good", new int[] {2, 2}, 1);
        Path out = outs.resolve("g");
        Path dir = Files.createDirectories(clients.resolve("dir").resolve(PeftAdapter.WEIGHTS));
        refused(1, says(dir.toString(), "is a directory"), aggregate(out, List.of(good, dir.getParent())));
        Path fifoClient = Files.createDirectory(clients.resolve("fifo"));
        Path fifo = fifoClient.resolve(PeftAdapter.WEIGHTS);
        assertEquals(0, new ProcessBuilder("mkfifo", fifo.toString()).start().waitFor());
        refused(1, says(fifo.toString(), "is a FIFO"), aggregate(out, List.of(good, fifoClient)));
        Path loopClient = Files.createDirectory(clients.resolve("loop"));
        Path loop = loopClient.resolve(PeftAdapter.WEIGHTS);
        Files.createSymbolicLink(loop, loopClient.resolve("other"));
        Files.createSymbolicLink(loopClient.resolve("other"), loop);
        refused(1, says(loop.toString(), "symbolic link loop"), aggregate(out, List.of(good, loopClient)));
        Path danglingClient = Files.createDirectory(clients.resolve("dangling"));
        Files.createSymbolicLink(danglingClient.resolve(PeftAdapter.WEIGHTS), tmp.resolve("gone.safetensors"));
        refused(1, says("is a symbolic link to " + tmp.resolve("gone.safetensors") + ", which does not exist"),
                aggregate(out, List.of(good, danglingClient)));
        Path badConfig = client("bad-config", new int[] {2, 2}, 2);
        Files.write(badConfig.resolve(PeftAdapter.CONFIG), new byte[] {'{', '"', 'r', (byte) 0xff, '"', '}'});
        refused(1, says(badConfig.resolve(PeftAdapter.CONFIG).toString(), "not valid UTF-8 (byte 0xFF at offset 3)"),
                aggregate(out, List.of(good, badConfig)));
        Path configDir = client("config-dir", new int[] {2, 2}, 3);
        Files.delete(configDir.resolve(PeftAdapter.CONFIG));
        Files.createDirectory(configDir.resolve(PeftAdapter.CONFIG));
        refused(1, says(configDir.resolve(PeftAdapter.CONFIG).toString(), "is a directory"),
                aggregate(out, List.of(good, configDir)));
        Path text = Files.writeString(clients.resolve("notes.safetensors"), "these are my notes, not tensors");
        refused(1, says(text.toString(), "not a safetensors file"), aggregate(out, List.of(good, text)));

    }

    @Test
    void anUnreadableFileIsNamed() throws Exception {
        Path good = client("good", new int[] {2, 2}, 1);
        Path out = outs.resolve("g");
        Path locked = client("locked", new int[] {2, 2}, 4);
        Files.setPosixFilePermissions(locked.resolve(PeftAdapter.WEIGHTS), java.util.Set.of());
        try {
            assumeTrue(!Files.isReadable(locked.resolve(PeftAdapter.WEIGHTS)),
                    "running as root, which reads a mode-000 file: skipping the unreadable case");
            refused(1, says(locked.resolve(PeftAdapter.WEIGHTS).toString(), "permission denied"),
                    aggregate(out, List.of(good, locked)));
        } finally {
            Files.setPosixFilePermissions(locked.resolve(PeftAdapter.WEIGHTS),
                    java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--"));
        }
    }

    /**
     * A file cut short while it is mapped: past its last page the read faults (InternalError);
     * within the last page it reads as zeros without a fault. Both name the file. Run in a fresh
     * JVM: once C2 has compiled the kernel loops (other tests warm them up), a fault there is a
     * SIGBUS that kills the JVM (hs_err) instead of an InternalError, which no Java code can
     * catch; README, "Command line", says so.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "module {0}x{0}")
    @org.junit.jupiter.params.provider.ValueSource(ints = {24, 512})
    void aFileTruncatedDuringTheRunIsNamed(int features) throws Exception {
        Map<String, Tensor> t = new LinkedHashMap<>();
        SplittableRandom random = new SplittableRandom(3);
        t.put("base_model.model.fc.lora_A.weight", Tensor.of(CliTest.values(random, 8 * features), 8, features));
        t.put("base_model.model.fc.lora_B.weight", Tensor.of(CliTest.values(random, features * 8), features, 8));
        List<Path> two = List.of(clients.resolve("v0"), clients.resolve("v1"));
        for (Path v : two) {
            PeftAdapter.write(v, t, null, CliTest.config(8, 16, false), Map.of(), 8);
        }
        Path victim = two.get(1).resolve(PeftAdapter.WEIGHTS);
        long size = Files.size(victim);
        Path out = outs.resolve("g");
        List<String> args = new ArrayList<>(List.of(victim.toString()));
        args.addAll(List.of(aggregate(out, two)));
        io.fedlora.ChildJvm.Result run = io.fedlora.ChildJvm.run(TruncatingMain.class,
                List.of("--add-modules", "jdk.incubator.vector", "--enable-native-access=ALL-UNNAMED"), Map.of(),
                args.toArray(String[]::new));
        assertEquals(1, run.exit(), run.output());
        // The launcher's own line (README: why it appears), then ours.
        String line = run.output().replace("WARNING: Using incubator modules: jdk.incubator.vector\n", "").strip();
        assertEquals(1, line.lines().count(), line);
        assertTrue(line.contains(victim.toString()) && line.contains("changed while being read")
                && line.contains(size + " bytes and is now 64"), line);
        if (features > 24) {
            assertTrue(line.contains("I/O fault"), "past the last page it faults: " + line);
        }
        assertFalse(Files.exists(out));
        assertNoLeftovers(outs);
    }

    /** --no-mmap reads each client into memory: the same output bit for bit, for every strategy and scale. */
    @org.junit.jupiter.params.ParameterizedTest(name = "{0} --scale {1}")
    @org.junit.jupiter.params.provider.CsvSource({"zero,none", "replication,none", "norm,none", "zero,fold",
            "replication,fold", "norm,fold", "svd,none", "svd,fold", "stack,none", "stack,fold"})
    void readingIntoMemoryGivesTheSameOutput(String strategy, String scale) throws Exception {
        List<Path> c = three();
        Path mapped = outs.resolve("mapped");
        Path read = outs.resolve("read");
        List<String> common = new ArrayList<>(List.of("aggregate", "--strategy", strategy, "--scale", scale, "--rank", "3"));
        if (!strategy.equals("norm")) {
            common.addAll(List.of("--weights", "1,5,2"));
        }
        c.forEach(p -> common.add(p.toString()));
        List<String> a = new ArrayList<>(common);
        a.addAll(List.of("-o", mapped.toString()));
        List<String> b = new ArrayList<>(common);
        b.addAll(List.of("--no-mmap", "-o", read.toString()));
        assertEquals(0, cli(a.toArray(String[]::new)).status());
        CliTest.Run run = cli(b.toArray(String[]::new));
        assertEquals(0, run.status(), run.err());
        assertEquals(-1L, Files.mismatch(mapped.resolve(PeftAdapter.WEIGHTS), read.resolve(PeftAdapter.WEIGHTS)));
        assertEquals(-1L, Files.mismatch(mapped.resolve(PeftAdapter.CONFIG), read.resolve(PeftAdapter.CONFIG)));
    }

    /** --no-mmap: a file changed after it was read is named, in this (warmed-up) JVM, without a fault. */
    @Test
    void readingIntoMemoryNamesAFileChangedDuringTheRun() throws Exception {
        List<Path> c = three();
        Path victim = c.get(1).resolve(PeftAdapter.WEIGHTS);
        long size = Files.size(victim);
        AggregateCommand.afterOpen = open -> {
            if (open.get(0).weightsFile().equals(victim)) {
                try (java.nio.channels.FileChannel ch = java.nio.channels.FileChannel.open(victim,
                        java.nio.file.StandardOpenOption.WRITE)) {
                    ch.truncate(64);
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            }
        };
        try {
            Path out = outs.resolve("g");
            CliTest.Run run = cli(aggregate(out, c, "--no-mmap"));
            assertEquals(1, run.status(), run.err());
            assertTrue(run.err().contains(victim + ": changed while being read: it was " + size + " bytes and is now 64"),
                    run.err());
            assertFalse(Files.exists(out));
            assertNoLeftovers(outs);
        } finally {
            AggregateCommand.afterOpen = open -> { };
        }
    }

    @Test
    void aHugeRankIsAUsageError() throws Exception {
        Map<String, Tensor> t = new LinkedHashMap<>();
        for (int m = 0; m < 2; m++) {
            t.put("base_model.model.l" + m + ".lora_A.weight", Tensor.of(new float[4096], 1, 4096));
            t.put("base_model.model.l" + m + ".lora_B.weight", Tensor.of(new float[4096], 4096, 1));
        }
        Path wide = clients.resolve("wide");
        PeftAdapter.write(wide, t, null, CliTest.config(1, 16, false), Map.of(), 1);
        Path out = outs.resolve("g");
        refused(2, says("--rank 2000000000 is larger than any layer"), aggregate(out, List.of(wide), "--rank", "2000000000"));
        refused(2, says("--rank 1000000 is too large for module"), aggregate(out, List.of(wide), "--rank", "1000000"));
        refused(2, says("--rank 200000", "heap", "FEDLORA_JAVA_OPTS"), aggregate(out, List.of(wide), "--rank", "200000"));
        refused(2, says("--rank 200000", "heap"), aggregate(out, List.of(wide), "--rank", "200000", "--no-mmap"));
    }

    // ---- 5. many clients ---------------------------------------------------------------------

    @Test
    void listFilesDirectoriesOfClientsAndWeightFiles() throws Exception {
        List<Path> c = three();
        Path out1 = outs.resolve("explicit");
        assertEquals(0, cli(aggregate(out1, List.of(c.get(1), c.get(0), c.get(2)), "--weights", "2,1,3")).status());
        // The directory of clients is taken in name order: laptop, phone, tablet.
        Path weights = Files.writeString(tmp.resolve("w.txt"), "# laptop, phone, tablet\n2\n1\n\n3\n");
        Path out2 = outs.resolve("dir");
        CliTest.Run run = cli("aggregate", "--strategy", "replication", "--weights-file", weights.toString(),
                "-o", out2.toString(), clients.toString());
        assertEquals(0, run.status(), run.err());
        assertTrue(run.out().contains("3 clients"), run.out());
        assertEquals(-1L, Files.mismatch(out1.resolve(PeftAdapter.WEIGHTS), out2.resolve(PeftAdapter.WEIGHTS)));
        // A subdirectory that is not a client is reported, not left out.
        Path broken = Files.createDirectory(clients.resolve("zz-broken"));
        refused(1, says(broken + ": no adapter_model.safetensors in this directory"), "aggregate", "--strategy",
                "zero", "-o", outs.resolve("z").toString(), clients.toString());
        Files.delete(broken);
        // -o that is a link is refused, whatever it points to.
        Path elsewhere = Files.createDirectory(tmp.resolve("elsewhere"));
        Path outLink = Files.createSymbolicLink(outs.resolve("out-link"), elsewhere);
        refused(2, says("is a symbolic link"), aggregate(outLink, c));
        Files.delete(outLink);
        // A list file: paths relative to it.
        Path list = Files.writeString(clients.resolve("list.txt"), "laptop\n# a comment\nphone\n" + c.get(2) + "\n");
        Path out3 = outs.resolve("list");
        run = cli("aggregate", "--strategy", "replication", "--weights", "2,1,3", "-o", out3.toString(), "@" + list);
        assertEquals(0, run.status(), run.err());
        assertEquals(-1L, Files.mismatch(out1.resolve(PeftAdapter.WEIGHTS), out3.resolve(PeftAdapter.WEIGHTS)));
        // '@' always means a list; a client named @x is ./@x.
        Path at = client("@odd", new int[] {2, 2}, 8);
        refused(2, says("@nothere: no such list file", "./@nothere"), "aggregate", "--strategy", "zero", "-o",
                outs.resolve("x").toString(), "@nothere");
        run = cli("aggregate", "--strategy", "zero", "-o", outs.resolve("at").toString(), at.getParent() + "/./@odd");
        assertEquals(0, run.status(), run.err());
        refused(2, says("--weights has 2 values for 3 clients"), "aggregate", "--strategy", "zero", "--weights", "1,2",
                "-o", outs.resolve("y").toString(), "@" + list);
        // CLIENT WEIGHT lines, in any order, relative to the weights file.
        Path keyed = Files.writeString(clients.resolve("keyed.txt"), "tablet 3\n# the phone\n./phone 1\n"
                + c.get(1) + " 2\n");
        Path out4 = outs.resolve("keyed");
        run = cli("aggregate", "--strategy", "replication", "--weights-file", keyed.toString(), "-o", out4.toString(),
                c.get(1).toString(), c.get(0).toString(), c.get(2).toString());
        assertEquals(0, run.status(), run.err());
        assertEquals(-1L, Files.mismatch(out1.resolve(PeftAdapter.WEIGHTS), out4.resolve(PeftAdapter.WEIGHTS)));
        Path partial = Files.writeString(tmp.resolve("partial.txt"), c.get(0) + " 1\n" + c.get(1) + " 2\n");
        refused(1, says(partial + ": has no weight for client " + c.get(2)), "aggregate", "--strategy", "zero",
                "--weights-file", partial.toString(), "-o", outs.resolve("y").toString(), c.get(0).toString(),
                c.get(1).toString(), c.get(2).toString());
        Path mixed = Files.writeString(tmp.resolve("mixed.txt"), c.get(0) + " 1\n2\n3\n");
        refused(1, says(mixed + ": mixes WEIGHT lines and CLIENT WEIGHT lines"), "aggregate", "--strategy", "zero",
                "--weights-file", mixed.toString(), "-o", outs.resolve("y").toString(), c.get(0).toString(),
                c.get(1).toString(), c.get(2).toString());
        Path badWeights = Files.writeString(tmp.resolve("bad.txt"), "1\nmany\n");
        refused(1, says(badWeights + ": line 2 ('many') is not a number"), "aggregate", "--strategy", "zero",
                "--weights-file", badWeights.toString(), "-o", outs.resolve("y").toString(), "@" + list);
    }

    @Test
    void aThousandClientsFromAListFile() throws Exception {
        Path many = Files.createDirectory(tmp.resolve("many"));
        StringBuilder list = new StringBuilder();
        StringBuilder weights = new StringBuilder();
        for (int k = 0; k < 1000; k++) {
            Map<String, Tensor> t = new LinkedHashMap<>();
            int r = 1 + k % 4;
            SplittableRandom random = new SplittableRandom(k);
            t.put("base_model.model.fc.lora_A.weight", Tensor.of(CliTest.values(random, r * 8), r, 8));
            t.put("base_model.model.fc.lora_B.weight", Tensor.of(CliTest.values(random, 8 * r), 8, r));
            Path f = many.resolve(String.format("client-%04d.safetensors", k));
            io.fedlora.io.Safetensors.write(f, t, Map.of());
            list.append(f.getFileName()).append('\n');
            weights.append(1 + k % 7).append('\n');
        }
        Path listFile = Files.writeString(many.resolve("clients.txt"), list);
        Path weightFile = Files.writeString(tmp.resolve("weights.txt"), weights);
        Path out = outs.resolve("g");
        CliTest.Run run = cli("aggregate", "--strategy", "replication", "--weights-file", weightFile.toString(),
                "-o", out.toString(), "@" + listFile);
        assertEquals(0, run.status(), run.err());
        assertTrue(run.out().contains("1000 clients"), run.out());
        // The directory form finds the same 1000 (the list file is not a client).
        run = cli("aggregate", "--strategy", "replication", "--weights-file", weightFile.toString(),
                "-o", outs.resolve("d").toString(), many.toString());
        assertEquals(0, run.status(), run.err());
        assertEquals(-1L, Files.mismatch(out.resolve(PeftAdapter.WEIGHTS), outs.resolve("d").resolve(PeftAdapter.WEIGHTS)));
    }

    static List<String> names(Path dir) throws IOException {
        try (Stream<Path> entries = Files.list(dir)) {
            return entries.map(p -> p.getFileName().toString()).sorted(Comparator.naturalOrder()).toList();
        }
    }

    static boolean python() {
        try {
            return new ProcessBuilder("python3", "--version").start().waitFor() == 0;
        } catch (IOException | InterruptedException e) {
            return false;
        }
    }
}
