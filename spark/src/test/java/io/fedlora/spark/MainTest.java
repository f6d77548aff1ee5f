package io.fedlora.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.io.PeftAdapter;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The command line's contract (spark/README.md): exit 0 with bad clients reported, 1 with none usable, 2 bad usage. */
class MainTest {

    @TempDir
    Path dir;

    @Test
    void exitStatusReportAndOutput() throws Exception {
        List<GenerateClients.Client> clients = GenerateClients.write(dir.resolve("clients"), 12, 16, 1, 3);
        List<String> lines = new ArrayList<>();
        clients.forEach(c -> lines.add(c.id() + "," + c.dir().toAbsolutePath() + "," + (long) c.weight()));
        lines.add("ghost," + dir.resolve("nowhere") + ",2");
        Path manifest = dir.resolve("m.csv");
        Files.write(manifest, lines, StandardCharsets.UTF_8);
        Path report = dir.resolve("bad.tsv");
        Path out = dir.resolve("global");

        assertEquals(2, Main.run("--strategy", "median", "--manifest", manifest.toString(), "-o", out.toString()));
        assertEquals(2, Main.run("--manifest", manifest.toString()));
        assertEquals(2, Main.run("--strategy", "svd", "--split", "diagonal", "--manifest", manifest.toString(), "-o", out.toString()));
        assertEquals(2, Main.run("--strategy", "zero", "--split", "balanced", "--manifest", manifest.toString(), "-o", out.toString()));
        assertFalse(Files.exists(out));

        assertEquals(0, Main.run("--master", "local[2]", "--strategy", "zero", "--manifest", manifest.toString(),
                "-o", out.toString(), "--report", report.toString()));
        assertTrue(Files.isRegularFile(out.resolve(PeftAdapter.WEIGHTS)) && Files.isRegularFile(out.resolve(PeftAdapter.CONFIG)));
        List<String> bad = Files.readAllLines(report);
        assertEquals(1, bad.size(), bad.toString());
        assertTrue(bad.get(0).startsWith("ghost\t" + dir.resolve("nowhere") + "\t") && bad.get(0).contains("no such file"), bad.get(0));

        // The output exists now: replacing it needs --force, as for fedlora aggregate.
        assertEquals(1, Main.run("--master", "local[2]", "--manifest", manifest.toString(), "-o", out.toString()));
        assertEquals(0, Main.run("--master", "local[2]", "--manifest", manifest.toString(), "-o", out.toString(), "--force"));

        Path none = dir.resolve("none.csv");
        Files.writeString(none, "a," + dir.resolve("nowhere") + ",1\nb,x,-1\n");
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream stderr = System.err;
        System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
        try {
            assertEquals(1, Main.run("--master", "local[2]", "--manifest", none.toString(), "-o", dir.resolve("g2").toString()));
        } finally {
            System.setErr(stderr);
        }
        assertFalse(Files.exists(dir.resolve("g2")));
        String message = err.toString(StandardCharsets.UTF_8);
        assertTrue(message.contains("fedlora-spark: no client of the manifest can be used (2 listed; first: b (")
                && message.contains("weight '-1'"), message);
    }
}
