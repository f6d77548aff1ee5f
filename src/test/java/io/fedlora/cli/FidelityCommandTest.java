package io.fedlora.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.Strategy;
import io.fedlora.io.PeftAdapter;
import io.fedlora.tensor.DType;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code fedlora fidelity}: the facade's report on the command line, its usage and file errors. */
class FidelityCommandTest {

    @TempDir
    Path dir;

    private List<Path> clients() throws Exception {
        int[][] ranks = {{2, 4}, {8, 2}, {4, 4}, {8, 3}};
        List<Path> paths = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            Path d = dir.resolve("client" + k);
            int maxRank = Math.max(ranks[k][0], ranks[k][1]);
            PeftAdapter.write(d, CliTest.tensors(ranks[k], DType.F32, 200 + k), null, CliTest.config(maxRank, 16, false),
                    Map.of("format", "pt"), maxRank);
            paths.add(d);
        }
        return paths;
    }

    @Test
    void jsonReportIsTheFacadeReport() throws Exception {
        List<Path> paths = clients();
        CliTest.Run run = CliTest.cli(CliTest.args(paths, "fidelity", "--json", "--weights", "1,2,3,4", "--backend", "scalar"));
        assertEquals(0, run.status(), run.err());
        JsonNode json = new ObjectMapper().readTree(run.out());
        List<String> strategies = new ArrayList<>();
        for (JsonNode row : json.get("overall")) {
            strategies.add(row.get("strategy").asText());
        }
        assertEquals(List.of("zero", "replication", "norm", "svd", "stack"), strategies);
        List<ClientUpdate> updates = new ArrayList<>();
        for (int k = 0; k < paths.size(); k++) {
            updates.add(PeftAdapter.open(paths.get(k)).toUpdate(paths.get(k).toString(), k + 1));
        }
        try (Aggregator agg = Aggregator.builder().strategy(Strategy.ZERO).backend("scalar").build()) {
            var report = agg.fidelity(updates, List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM, Strategy.SVD,
                    Strategy.STACK));
            assertEquals(report.toJson(), run.out());
            assertEquals(0.0, report.overall("stack").exact());
        }
        assertEquals(2 * 5, json.get("modules").size(), "two modules x five strategies");
    }

    @Test
    void textReportAndStrategySubset() throws Exception {
        CliTest.Run run = CliTest.cli(CliTest.args(clients(), "fidelity", "--strategy", "replication,svd", "--rank", "6"));
        assertEquals(0, run.status(), run.err());
        assertTrue(run.out().contains("overall") && run.out().contains("replication") && run.out().contains("svd")
                && !run.out().contains("stack"), run.out());
        assertTrue(run.out().contains("@8"), "a column per client rank: " + run.out());
    }

    @Test
    void usageAndFileErrors() throws Exception {
        CliTest.Run bad = CliTest.cli(CliTest.args(clients(), "fidelity", "--strategy", "median"));
        assertEquals(2, bad.status(), bad.err());
        Path missing = dir.resolve("nope");
        CliTest.Run gone = CliTest.cli("fidelity", missing.toString());
        assertEquals(1, gone.status());
        assertTrue(gone.err().contains(missing.toString()), gone.err());
    }

    @Test
    void aggregateReportIsTheFidelityOfWhatItWrote() throws Exception {
        List<Path> paths = clients();
        for (String strategy : List.of("replication", "svd")) {
            Path out = dir.resolve("global-" + strategy), report = dir.resolve(strategy + "-report.json");
            CliTest.Run run = CliTest.cli(CliTest.args(paths, "aggregate", "--strategy", strategy, "--backend", "scalar",
                    "--weights", "1,2,3,4", "--report", report.toString(), "-o", out.toString()));
            assertEquals(0, run.status(), run.err());
            CliTest.Run alone = CliTest.cli(CliTest.args(paths, "fidelity", "--json", "--strategy", strategy,
                    "--backend", "scalar", "--weights", "1,2,3,4"));
            assertEquals(0, alone.status(), alone.err());
            assertEquals(alone.out(), java.nio.file.Files.readString(report));
            try (var files = java.nio.file.Files.list(dir)) {
                assertTrue(files.noneMatch(f -> f.getFileName().toString().contains("fedlora-tmp")), "no temporary left");
            }
            // An existing report is replaced only with --force.
            CliTest.Run again = CliTest.cli(CliTest.args(paths, "aggregate", "--strategy", strategy, "--backend", "scalar",
                    "--report", report.toString(), "-o", dir.resolve("other-" + strategy).toString()));
            assertEquals(2, again.status(), again.err());
            assertTrue(again.err().contains("exists; add --force"), again.err());
        }
        // Never inside -o (replaced whole) or an input, and not with --no-mmap.
        Path out = dir.resolve("g");
        CliTest.Run inside = CliTest.cli(CliTest.args(paths, "aggregate", "--strategy", "zero", "--report",
                out.resolve("r.json").toString(), "-o", out.toString()));
        assertEquals(2, inside.status(), inside.err());
        assertTrue(inside.err().contains("lies inside -o"), inside.err());
        CliTest.Run input = CliTest.cli(CliTest.args(paths, "aggregate", "--strategy", "zero", "--report",
                paths.get(0).resolve("adapter_config.json").toString(), "-o", out.toString()));
        assertEquals(2, input.status(), input.err());
        assertTrue(input.err().contains("inside the input"), input.err());
        CliTest.Run noMmap = CliTest.cli(CliTest.args(paths, "aggregate", "--strategy", "zero", "--no-mmap", "--report",
                dir.resolve("x.json").toString(), "-o", out.toString()));
        assertEquals(2, noMmap.status(), noMmap.err());
    }
}
