package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A backend below the best this machine could run is never chosen in silence: without the Vector
 * module the reason reaches the user through SLF4J when there is a provider, else once on stderr,
 * with either slf4j-api 1.7 or 2.x, and logging trouble never breaks the choice.
 */
class BackendLoggingTest {

    static final String WARNING = "fedlora: WARNING: fedlora runs the scalar backend";

    /** The test class path with the slf4j jars replaced by {@code slf4j} (none when empty). */
    static String classPath(String... slf4j) {
        List<String> out = Arrays.stream(System.getProperty("java.class.path").split(File.pathSeparator))
                .filter(p -> !Path.of(p).getFileName().toString().startsWith("slf4j-"))
                .collect(Collectors.toCollection(ArrayList::new));
        out.addAll(List.of(slf4j));
        return String.join(File.pathSeparator, out);
    }

    static String jar(String dir, String prefix) throws Exception {
        try (var files = Files.list(Path.of(dir))) {
            return files.filter(p -> p.getFileName().toString().startsWith(prefix)).findFirst().orElseThrow().toString();
        }
    }

    static String slf4j2(String artifact) throws Exception {
        return Arrays.stream(System.getProperty("java.class.path").split(File.pathSeparator))
                .filter(p -> Path.of(p).getFileName().toString().startsWith(artifact + "-2.")).findFirst().orElseThrow();
    }

    static ChildJvm.Result probe(String classPath, String... jvmArgs) throws Exception {
        List<String> args = new ArrayList<>(List.of("--enable-native-access=ALL-UNNAMED"));
        args.addAll(List.of(jvmArgs));
        Map<String, String> env = new java.util.HashMap<>();
        env.put("FEDLORA_QUIET", "0");
        env.put("LD_LIBRARY_PATH", null); // no device emulator: the CPU case this test is about
        return ChildJvm.run(TwoAggregatorsMain.class, classPath, args, env);
    }

    static long count(String output, String text) {
        return output.lines().filter(l -> l.contains(text)).count();
    }

    @Test
    void withoutAProviderTheWarningIsOneStderrLineSayingWhatToDo() throws Exception {
        for (String api : new String[] {slf4j2("slf4j-api"), jar("target/slf4j-1.7", "slf4j-api")}) {
            ChildJvm.Result r = probe(classPath(api), "-Dfedlora.backend=auto");
            assertEquals(0, r.exit(), r.output());
            assertTrue(r.output().contains("chosen=scalar"), r.output());
            assertEquals(1, count(r.output(), WARNING), r.output());
            assertTrue(r.output().contains("--add-modules jdk.incubator.vector") && r.output().contains("-Dfedlora.quiet=true"),
                    r.output());
            assertFalse(r.output().contains("SLF4J"), "SLF4J's own no-provider lines are never triggered:\n" + r.output());
        }
    }

    @Test
    void quietSilencesIt() throws Exception {
        ChildJvm.Result r = probe(classPath(slf4j2("slf4j-api")), "-Dfedlora.quiet=true");
        assertEquals(0, r.exit(), r.output());
        assertEquals(0, count(r.output(), "fedlora: WARNING"), r.output());
    }

    @Test
    void withAProviderItGoesThroughSlf4j() throws Exception {
        String[][] stacks = {
            {slf4j2("slf4j-api"), slf4j2("slf4j-simple")},
            {jar("target/slf4j-1.7", "slf4j-api"), jar("target/slf4j-1.7", "slf4j-simple")},
        };
        for (String[] stack : stacks) {
            ChildJvm.Result r = probe(classPath(stack));
            assertEquals(0, r.exit(), r.output());
            assertEquals(1, count(r.output(), "WARN io.fedlora.kernels.Backends - fedlora runs the scalar backend"), r.output());
            assertEquals(0, count(r.output(), WARNING), r.output());
        }
    }

    @Test
    void aBrokenLoggingSetupNeverBreaksTheChoice(@TempDir Path dir) throws Exception {
        Path services = dir.resolve("META-INF/services");
        Files.createDirectories(services);
        Files.writeString(services.resolve("org.slf4j.spi.SLF4JServiceProvider"), "no.such.Provider\n");
        ChildJvm.Result r = probe(classPath(slf4j2("slf4j-api"), dir.toString()));
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("chosen=scalar"), r.output());
        // With no slf4j at all on the class path.
        r = probe(classPath());
        assertEquals(0, r.exit(), r.output());
        assertEquals(1, count(r.output(), WARNING), r.output());
    }

    /** Child JVM: two aggregators, two rounds; prints the chosen backend. */
    public static final class TwoAggregatorsMain {
        public static void main(String[] args) {
            for (int i = 0; i < 2; i++) {
                try (Aggregator a = Aggregator.of(Policy.of(Strategy.ZERO))) {
                    System.out.println("chosen=" + a.backendName());
                }
            }
        }
    }
}
