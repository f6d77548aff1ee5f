package io.fedlora.product;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The dense reference of {@link ProductSpaceTest} uses EJML, like the code under test; this one
 * asks numpy (LAPACK) instead, through {@code /usr/bin/python3}: the singular values, the rank-R
 * product, and the fidelity of ZERO, REPLICATION and NORM against both targets. Skipped only
 * where python3 with numpy is missing.
 */
class NumpyCrossCheckTest {

    private static final String SCRIPT = """
            import sys, json, numpy as np
            d = sys.argv[1]
            meta = json.load(open(d + '/meta.json'))
            m, n, R = meta['m'], meta['n'], meta['R']
            raw = np.fromfile(d + '/factors.bin', dtype='<f4').astype(np.float64)
            At, Bt, off = [], [], 0
            for r in meta['ranks']:
                At.append(raw[off:off + r * n].reshape(r, n)); off += r * n
                Bt.append(raw[off:off + m * r].reshape(m, r)); off += m * r
            p = np.array(meta['weights']); w = p / p.sum()
            exact = sum(w[k] * Bt[k] @ At[k] for k in range(len(At)))
            rmax = max(meta['ranks'])
            owner = np.array([sum(p[k] for k in range(len(At)) if i < At[k].shape[0]) for i in range(rmax)])
            ra = sum(p[k] / owner[i] * np.outer(Bt[k][:, i], At[k][i]) for k in range(len(At)) for i in range(At[k].shape[0]))
            U, s, Vt = np.linalg.svd(exact)
            TR = (U[:, :R] * s[:R]) @ Vt[:R]
            TR.astype('<f8').tofile(d + '/truncated.bin')
            def average(v, repl):
                out = np.zeros((m, n))
                for i in range(R):
                    own = [k for k in range(len(At)) if i < At[k].shape[0]]
                    div = sum(v[k] for k in own) if repl else sum(v)
                    b = sum(v[k] * Bt[k][:, i] for k in own) / div
                    a = sum(v[k] * At[k][i] for k in own) / div
                    out += np.outer(b, a)
                return out
            norms = [np.linalg.norm(Bt[k] @ At[k]) for k in range(len(At))]
            res = {'sigma': s[:R].tolist()}
            for name, out in [('zero', average(p, False)), ('replication', average(p, True)), ('norm', average(norms, False))]:
                res[name] = [np.linalg.norm(exact - out) / np.linalg.norm(exact), np.linalg.norm(ra - out) / np.linalg.norm(ra)]
            res['svd'] = [np.linalg.norm(exact - TR) / np.linalg.norm(exact), np.linalg.norm(ra - TR) / np.linalg.norm(ra)]
            json.dump(res, open(d + '/result.json', 'w'))
            """;

    @TempDir
    Path dir;

    @Test
    void matchesNumpy() throws Exception {
        Assumptions.assumeTrue(Files.isExecutable(Path.of("/usr/bin/python3")), "no /usr/bin/python3");
        Process probe = new ProcessBuilder("/usr/bin/python3", "-c", "import numpy").redirectErrorStream(true).start();
        Assumptions.assumeTrue(probe.waitFor() == 0, "no numpy for /usr/bin/python3");
        int m = 52, n = 44, rank = 9;
        int[] ranks = {3, 9, 5, 2};
        double[] weights = {4, 1, 2, 3};
        List<ModuleFactors> clients = Dense64.clients(31, m, n, ranks, weights, null);
        write(clients, m, n, rank);
        Process py = new ProcessBuilder("/usr/bin/python3", "-c", SCRIPT, dir.toString()).redirectErrorStream(true).start();
        String log = new String(py.getInputStream().readAllBytes());
        assertEquals(0, py.waitFor(), "numpy reference failed: " + log);
        var result = new com.fasterxml.jackson.databind.ObjectMapper().readTree(dir.resolve("result.json").toFile());
        try (ProductSpace ps = new ProductSpace(new VectorGram(), 2)) {
            Grams g = ps.grams("x", clients);
            LowRank svd = ps.svd(g, clients, rank, Split.FLEXLORA, 1.0, Fill.ORTH);
            for (int i = 0; i < rank; i++) {
                double want = result.get("sigma").get(i).asDouble();
                assertEquals(want, svd.sigma()[i], 1e-12 * result.get("sigma").get(0).asDouble(), "sigma " + i);
            }
            ByteBuffer truncated = ByteBuffer.wrap(Files.readAllBytes(dir.resolve("truncated.bin"))).order(ByteOrder.LITTLE_ENDIAN);
            var product = Dense64.product(svd.b(), svd.a(), m, rank, n, 1);
            double diff = 0, ref = 0;
            for (int i = 0; i < m * n; i++) {
                double t = truncated.getDouble();
                diff += (product.data[i] - t) * (product.data[i] - t);
                ref += t * t;
            }
            assertTrue(Math.sqrt(diff / ref) < 2e-6, "||sBA - T_R|| / ||T_R|| = " + Math.sqrt(diff / ref));
            double[] norms = new double[ranks.length];
            for (int k = 0; k < ranks.length; k++) {
                norms[k] = g.updateNorm(k);
            }
            double[] ones = Dense64.ones(ranks.length);
            Object[][] cases = {
                {"zero", Coefficients.factorAverage(ranks, weights, ones, rank, false)},
                {"replication", Coefficients.factorAverage(ranks, weights, ones, rank, true)},
                {"norm", Coefficients.factorAverage(ranks, norms, ones, rank, false)},
                {"svd", svd.coefficients()}};
            for (Object[] c : cases) {
                ModuleFidelity f = ps.fidelity(g, (Coefficients) c[1], new int[0]);
                double wantExact = result.get((String) c[0]).get(0).asDouble();
                double wantRa = result.get((String) c[0]).get(1).asDouble();
                assertEquals(wantExact, f.exact(), 1e-8 * wantExact + 1e-13, c[0] + " vs dW*");
                assertEquals(wantRa, f.rankAware(), 1e-8 * wantRa + 1e-13, c[0] + " vs dW_ra");
            }
        }
    }

    private void write(List<ModuleFactors> clients, int m, int n, int rank) throws IOException {
        StringBuilder meta = new StringBuilder("{\"m\": " + m + ", \"n\": " + n + ", \"R\": " + rank + ", \"ranks\": [");
        StringBuilder w = new StringBuilder();
        ByteBuffer buf = ByteBuffer.allocate(clients.stream().mapToInt(c -> c.rank() * (m + n)).sum() * 4)
                .order(ByteOrder.LITTLE_ENDIAN);
        for (int k = 0; k < clients.size(); k++) {
            ModuleFactors c = clients.get(k);
            meta.append(k == 0 ? "" : ", ").append(c.rank());
            w.append(k == 0 ? "" : ", ").append(c.weight());
            for (int i = 0; i < c.rank(); i++) {
                for (int j = 0; j < n; j++) {
                    buf.putFloat(c.a().get(i, j));
                }
            }
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < c.rank(); j++) {
                    buf.putFloat(c.b().get(i, j));
                }
            }
        }
        meta.append("], \"weights\": [").append(w).append("]}");
        Files.writeString(dir.resolve("meta.json"), meta);
        try (DataOutputStream out = new DataOutputStream(Files.newOutputStream(dir.resolve("factors.bin")))) {
            out.write(buf.array());
        }
    }
}
