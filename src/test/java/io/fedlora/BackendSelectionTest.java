package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.kernels.Backends;
import io.fedlora.kernels.Kernels;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The backend chosen is the one expected: a silent fallback fails here. */
class BackendSelectionTest {

    @Test
    void theProcessBackendIsTheExpectedOne() {
        // The build says what this machine must pick for weighted sums (vector, also under the
        // device emulator: CudaAutoRule) and for dense algebra (vector; cuda under the emulator).
        String expected = System.getProperty("fedlora.expect.backend");
        String expectedDense = System.getProperty("fedlora.expect.dense.backend");
        assertNotNull(expected, "the build must set fedlora.expect.backend");
        assertNotNull(expectedDense, "the build must set fedlora.expect.dense.backend");
        assertEquals(expected, Backends.get().name());
        assertEquals(expected, Backends.get(false).name());
        assertEquals(expectedDense, Backends.get(true).name());
        // Through the facade: the product-space strategies are the dense algebra.
        try (Aggregator zero = Aggregator.of(Policy.of(Strategy.ZERO)); Aggregator norm = Aggregator.of(Policy.of(Strategy.NORM));
                Aggregator svd = Aggregator.of(Policy.of(Strategy.SVD))) {
            assertEquals(expected, zero.backendName());
            assertEquals(expected, norm.backendName());
            assertEquals(expectedDense, svd.backendName());
        }
        assertTrue(Backends.report().autoRule().startsWith("auto prefers CUDA for device-resident data"),
                Backends.report().autoRule());
        if (expected.equals(expectedDense)) {
            assertTrue(Backends.get(false) == Backends.get(true), "one process-wide instance when both choose the same backend");
        }
    }

    @Test
    void namedBackendsAreTheOnesAskedFor() {
        for (String name : List.of("scalar", "vector")) {
            try (Kernels k = Backends.create(name, 2)) {
                assertEquals(name, k.name());
            }
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Backends.create("tpu", 1));
        assertTrue(e.getMessage().contains("unknown backend 'tpu'"), e.getMessage());
    }

    @Test
    void probesReportEveryBackend() {
        List<Backends.Probe> probes = Backends.probeAll();
        assertEquals(Backends.NAMES, probes.stream().map(Backends.Probe::name).toList());
        for (Backends.Probe p : probes) {
            assertTrue(p.detail() != null && !p.detail().isBlank(), p.name());
        }
        assertTrue(probes.get(2).available(), "scalar always runs");
    }

    /** ProbeMain in a fresh JVM without the Vector module, so the lookup must fall back or fail. */
    static ChildJvm.Result child(String... jvmArgs) throws IOException, InterruptedException {
        return ChildJvm.run(ProbeMain.class, List.of(jvmArgs), Map.of());
    }

    @Test
    void withoutTheVectorModuleAutoFallsBackAndSaysWhy() throws Exception {
        ChildJvm.Result r = child("-Dfedlora.backend=auto");
        assertEquals(0, r.exit(), r.output());
        assertTrue(!r.output().contains("chosen=vector"), r.output());
        // CUDA (the emulator, or a real GPU) may come first; otherwise scalar, with the reason vector was skipped.
        if (!r.output().contains("chosen=cuda")) {
            assertTrue(r.output().contains("chosen=scalar"), r.output());
            assertTrue(r.output().contains("skipped") && r.output().contains("run java with --add-modules jdk.incubator.vector"),
                    r.output());
        }
    }

    @Test
    void aForcedBackendThatCannotRunIsAnError() throws Exception {
        ChildJvm.Result r = child("-Dfedlora.backend=vector");
        assertEquals(3, r.exit(), r.output());
        assertTrue(r.output().contains("backend 'vector' was requested but cannot run here"), r.output());
    }
}
