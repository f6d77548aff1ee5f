package io.fedlora.examples;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Round;
import io.fedlora.io.PeftAdapter;
import io.fedlora.kernels.Backends;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The README's Java snippets are {@link Examples}' tagged regions, verbatim, and each example
 * does what the README says it does. {@code -Dfedlora.examples.update=true} rewrites the
 * README's blocks from Examples.java instead of failing (then review the diff).
 */
class ExamplesTest {

    static final Path README = Path.of("README.md");
    static final Path SOURCE = Path.of("src/test/java/io/fedlora/examples/Examples.java");
    /** The line before a README block: which regions of which file the block is, in order. */
    static final Pattern MARKER = Pattern.compile("<!-- example: (\\S+)((?: [\\w-]+)+) -->");
    static final Pattern REGION = Pattern.compile("(?s)\n[ \t]*// tag::([\\w-]+)\\[\\]\n(.*?)\n[ \t]*// end::\\1\\[\\]\n");

    static Aggregator aggregator;
    static Map<String, Tensor> phone;
    static Map<String, Tensor> laptop;

    @BeforeAll
    static void setUp() {
        aggregator = Examples.newAggregator();
        phone = Examples.adapter(4, 11);
        laptop = Examples.adapter(16, 12);
    }

    @AfterAll
    static void tearDown() {
        aggregator.close();
    }

    /** Tagged regions of a source file, each with its common indentation removed. */
    static Map<String, String> regions(Path source) throws IOException {
        Map<String, String> regions = new LinkedHashMap<>();
        Matcher m = REGION.matcher(Files.readString(source));
        while (m.find()) {
            if (regions.put(m.group(1), m.group(2).stripIndent()) != null) {
                fail("region " + m.group(1) + " twice in " + source);
            }
        }
        return regions;
    }

    record Block(int start, int end, String marker, String file, List<String> names, String text) {
    }

    /** Every ```java block of the README, with the example marker on the line before it (or none). */
    static List<Block> javaBlocks(String readme) {
        List<Block> blocks = new ArrayList<>();
        Matcher fence = Pattern.compile("(?m)^```java\n(?s)(.*?)^```$").matcher(readme);
        while (fence.find()) {
            int lineStart = readme.lastIndexOf('\n', fence.start() - 2) + 1;
            String before = readme.substring(lineStart, Math.max(lineStart, fence.start() - 1));
            Matcher marker = MARKER.matcher(before);
            boolean marked = marker.matches();
            blocks.add(new Block(fence.start(), fence.end(), marked ? before : null, marked ? marker.group(1) : null,
                    marked ? List.of(marker.group(2).strip().split(" ")) : List.of(), fence.group(1)));
        }
        return blocks;
    }

    static String expected(Block block, Map<String, String> regions) {
        List<String> parts = new ArrayList<>();
        for (String name : block.names()) {
            String region = regions.get(name);
            if (region == null) {
                fail("README marker '" + block.marker() + "' names region '" + name + "', which " + SOURCE
                        + " does not have (it has " + regions.keySet() + ")");
            }
            parts.add(region);
        }
        return String.join("\n\n", parts) + "\n";
    }

    @Test
    void everyJavaBlockInTheReadmeIsTheCompiledExampleVerbatim() throws IOException {
        String readme = Files.readString(README, StandardCharsets.UTF_8);
        Map<String, String> regions = regions(SOURCE);
        assertTrue(regions.keySet().containsAll(List.of("imports", "setup", "batch", "streaming", "partial", "download", "peft")),
                regions.keySet().toString());
        List<Block> blocks = javaBlocks(readme);
        assertFalse(blocks.isEmpty(), "no ```java block in " + README);
        boolean update = Boolean.getBoolean("fedlora.examples.update");
        StringBuilder updated = new StringBuilder();
        int copied = 0;
        List<String> shown = new ArrayList<>();
        for (Block block : blocks) {
            if (block.marker() == null) {
                fail("a ```java block in " + README + " has no '<!-- example: " + SOURCE + " REGION... -->' line before it,"
                        + " so no test compiles it:\n" + block.text());
            }
            assertEquals(SOURCE.toString(), block.file(), "README example marker names another file");
            String want = expected(block, regions);
            if (update) {
                updated.append(readme, copied, block.start()).append("```java\n").append(want).append("```");
                copied = block.end();
            } else if (!want.equals(block.text())) {
                fail("README block after '" + block.marker() + "' differs from " + SOURCE + " (rerun with "
                        + "-Dfedlora.examples.update=true to copy the examples into the README).\nREADME:\n"
                        + block.text() + "\nExamples.java:\n" + want);
            }
            shown.addAll(block.names());
        }
        if (update) {
            updated.append(readme.substring(copied));
            Files.writeString(README, updated.toString(), StandardCharsets.UTF_8);
        }
        assertTrue(shown.containsAll(regions.keySet()), "regions of " + SOURCE + " the README does not show: "
                + regions.keySet().stream().filter(r -> !shown.contains(r)).toList());
    }

    @Test
    void theRegionParserSeesADifferenceOfOneCharacter(@TempDir Path dir) throws IOException {
        // The comparison above is only as good as the extraction: a changed line must change the region.
        String source = Files.readString(SOURCE);
        Path changed = dir.resolve("Examples.java");
        Files.writeString(changed, source.replace("ClientUpdate.of(\"phone-17\", 120, phone)", "ClientUpdate.of(\"phone-17\", 121, phone)"));
        assertFalse(regions(changed).get("batch").equals(regions(SOURCE).get("batch")));
        assertEquals(regions(SOURCE).get("download"), regions(changed).get("download"));
    }

    @Test
    void setupReportsTheBackendItGot() {
        assertEquals(Backends.report().chosen(), aggregator.backendName());
        assertEquals(System.getProperty("fedlora.expect.backend", aggregator.backendName()), aggregator.backendName());
    }

    /** REPLICATION: components 0..3 averaged over both owners, 4..15 over the laptop alone (its own values). */
    @Test
    void batchAveragesEachComponentOverItsOwners() {
        Map<String, Tensor> global = Examples.batch(aggregator, phone, laptop);
        assertEquals(laptop.keySet(), global.keySet());
        for (String key : global.keySet()) {
            Tensor g = global.get(key);
            assertArrayEquals(laptop.get(key).shape(), g.shape(), key);
            boolean isA = key.endsWith(".lora_A.weight");
            long rows = g.dim(0), cols = g.dim(1);
            float[] gv = g.toFloatArray(), lv = laptop.get(key).toFloatArray(), pv = phone.get(key).toFloatArray();
            int phoneCols = (int) phone.get(key).dim(1);
            for (int i = 0; i < rows; i++) {
                for (int j = 0; j < cols; j++) {
                    int component = isA ? i : j;
                    double want = component < 4
                            ? (120.0 * pv[isA ? i * (int) cols + j : i * phoneCols + j] + 800.0 * lv[(int) (i * cols + j)]) / 920.0
                            : lv[(int) (i * cols + j)];
                    double got = gv[(int) (i * cols + j)];
                    if (Math.abs(got - want) > 1e-6 + 1e-5 * Math.abs(want)) {
                        fail(key + "[" + i + ", " + j + "] = " + got + ", want " + want);
                    }
                }
            }
        }
    }

    @Test
    void streamingWithAMergeEqualsTheBatchAndSkipsARefusedClient() {
        Map<String, Tensor> broken = new LinkedHashMap<>(Examples.adapter(8, 13));
        String key = broken.keySet().iterator().next();
        float[] nan = broken.get(key).toFloatArray();
        nan[nan.length / 2] = Float.NaN;
        broken.put(key, Tensor.of(nan, broken.get(key).shape()));
        Map<String, Tensor> tablet = Examples.adapter(8, 14);
        List<ClientUpdate> east = List.of(ClientUpdate.of("phone-17", 120, phone), ClientUpdate.of("broken", 50, broken),
                ClientUpdate.of("tablet-9", 450, tablet));
        List<ClientUpdate> west = List.of(ClientUpdate.of("laptop-3", 800, laptop));
        Map<String, Tensor> streamed = Examples.streaming(aggregator, east, west);
        Map<String, Tensor> batch = aggregator.aggregate(List.of(east.get(0), east.get(2), west.get(0)));
        assertClose(batch, streamed);
    }

    @Test
    void aPartialThroughAFileMergesLikeTheRound(@TempDir Path dir) throws IOException {
        Path file = dir.resolve("partial.safetensors");
        Map<String, Tensor> merged;
        try (Round here = aggregator.newRound(); Round there = aggregator.newRound()) {
            there.add(ClientUpdate.of("laptop-3", 800, laptop));
            Examples.sendPartial(there, file);
            here.add(ClientUpdate.of("phone-17", 120, phone));
            Examples.receivePartial(here, file);
            assertEquals(2, here.clientCount());
            merged = here.finish();
        }
        assertClose(Examples.batch(aggregator, phone, laptop), merged);
    }

    @Test
    void downloadKeepsTheFirstComponentsBitForBit() {
        Map<String, Tensor> global = Examples.batch(aggregator, phone, laptop);
        Map<String, Tensor> down = Examples.forClient(global, 4);
        assertEquals(global.keySet(), down.keySet());
        for (String key : global.keySet()) {
            Tensor g = global.get(key), d = down.get(key);
            boolean isA = key.endsWith(".lora_A.weight");
            assertEquals(4, isA ? d.dim(0) : d.dim(1), key);
            float[] gv = g.toFloatArray(), dv = d.toFloatArray();
            for (int i = 0; i < d.dim(0); i++) {
                for (int j = 0; j < d.dim(1); j++) {
                    assertEquals(Float.floatToRawIntBits(gv[(int) (i * g.dim(1) + j)]),
                            Float.floatToRawIntBits(dv[(int) (i * d.dim(1) + j)]), key);
                }
            }
        }
    }

    @Test
    void peftDirectoriesInAndOutGiveTheBatchResultBitForBit(@TempDir Path dir) throws IOException {
        PeftAdapter.write(dir.resolve("phone-17"), phone, DType.F32, Examples.config(4), Map.of(), 4);
        PeftAdapter.write(dir.resolve("laptop-3"), laptop, DType.F32, Examples.config(16), Map.of(), 16);
        Path out = dir.resolve("global");
        Examples.aggregateDirectories(aggregator, List.of(dir.resolve("phone-17"), dir.resolve("laptop-3")),
                List.of(120.0, 800.0), out);
        Map<String, Tensor> batch = Examples.batch(aggregator, phone, laptop);
        try (PeftAdapter written = PeftAdapter.open(out)) {
            assertEquals(16, written.config().r());
            // Both clients act with scale 2 (alpha = 2 r); so must the global adapter at rank 16
            // (keeping the phone's lora_alpha = 8 with r = 16 would make it 0.5).
            for (String module : PeftAdapter.moduleRanks(written.tensors()).keySet()) {
                assertEquals(2.0, written.config().scaleFor(module, written.config().rankFor(module)), 1e-12, module);
            }
            assertEquals(batch.keySet(), written.tensors().keySet());
            for (String key : batch.keySet()) {
                assertArrayEquals(batch.get(key).toFloatArray(), written.tensors().get(key).toFloatArray(), key);
            }
        }
        try (var files = Files.list(dir)) {
            assertEquals(List.of("global", "laptop-3", "phone-17"),
                    files.map(p -> p.getFileName().toString()).sorted().toList(), "nothing else left behind");
        }
    }

    @Test
    void mainRunsEveryExample() throws IOException {
        var out = new java.io.ByteArrayOutputStream();
        var previous = System.out;
        System.setOut(new java.io.PrintStream(out, true, StandardCharsets.UTF_8));
        try {
            Examples.main(new String[0]);
        } finally {
            System.setOut(previous);
        }
        String printed = out.toString(StandardCharsets.UTF_8);
        assertTrue(printed.contains("partial: 2 clients") && printed.contains("r = 16") && printed.endsWith("examples: ok\n"),
                printed);
    }

    static void assertClose(Map<String, Tensor> want, Map<String, Tensor> got) {
        assertEquals(want.keySet(), got.keySet());
        for (String key : want.keySet()) {
            assertArrayEquals(want.get(key).shape(), got.get(key).shape(), key);
            float[] w = want.get(key).toFloatArray(), g = got.get(key).toFloatArray();
            for (int i = 0; i < w.length; i++) {
                if (!(Math.abs(w[i] - g[i]) <= 1e-6 + 1e-5 * Math.abs(w[i]))) {
                    fail(key + "[" + i + "] = " + g[i] + ", want " + w[i] + " (" + Arrays.toString(Arrays.copyOf(g, 4)) + "...)");
                }
            }
        }
    }
}
