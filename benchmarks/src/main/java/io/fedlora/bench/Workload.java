package io.fedlora.bench;

import io.fedlora.ClientUpdate;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * The synthetic rounds every benchmark uses, reproducible from a fixed seed so that the report
 * can recompute how many bytes a configuration moves without building it.
 */
public final class Workload {
    private Workload() {
    }

    static final long SEED = 20240625L;

    /**
     * {@code Workload ranks MIX CLIENTS}: prints the ranks, comma-separated, so that the Python
     * peers in baseline/ aggregate exactly the shapes the JMH run did.
     */
    public static void main(String[] args) {
        if (args.length != 3 || !args[0].equals("ranks")) {
            System.err.println("usage: Workload ranks uniform|pow2|paper CLIENTS");
            System.exit(2);
        }
        int[] ranks = ranks(args[1], Integer.parseInt(args[2]));
        StringBuilder out = new StringBuilder();
        for (int r : ranks) {
            out.append(out.isEmpty() ? "" : ",").append(r);
        }
        System.out.println(out);
    }

    /** One adapted layer: lora_A is {@code [r, in]}, lora_B is {@code [out, r]} (PEFT layout). */
    public record Module(String name, int in, int out) {
        String keyA() {
            return name + ".lora_A.weight";
        }

        String keyB() {
            return name + ".lora_B.weight";
        }
    }

    /**
     * Shape names: distilbert (one 768x768 attention projection), llama-attn (a 4096x4096
     * q/k/v/o projection of Llama-7B), llama-mlp (an 11008x4096 up/gate projection: in 4096, out
     * 11008), llama7b (both Llama modules in one round: the issue-2 configuration).
     */
    public static List<Module> modules(String shape) {
        return switch (shape) {
            case "distilbert" -> List.of(new Module("layer.0.attention.q_lin", 768, 768));
            case "llama-attn" -> List.of(new Module("layers.0.self_attn.q_proj", 4096, 4096));
            case "llama-mlp" -> List.of(new Module("layers.0.mlp.up_proj", 4096, 11008));
            case "llama7b" -> List.of(new Module("layers.0.self_attn.q_proj", 4096, 4096),
                    new Module("layers.0.mlp.up_proj", 4096, 11008));
            default -> throw new IllegalArgumentException("unknown shape '" + shape
                    + "'; expected distilbert, llama-attn, llama-mlp or llama7b");
        };
    }

    /**
     * Client ranks. paper: the mix of Byun and Lee (arXiv 2406.17477), 90% rank 5 and 10% rank 20;
     * at least one client has rank 20 so that small rounds are heterogeneous too (K=2 gets one of
     * each). uniform: each rank drawn uniformly from 8..64 (arbitrary ranks: most are not a
     * multiple of any vector width). pow2: each drawn uniformly from {8, 16, 32, 64}. Issue 8
     * measures both.
     */
    public static int[] ranks(String mix, int clients) {
        SplittableRandom random = new SplittableRandom(SEED ^ clients);
        int[] ranks = new int[clients];
        switch (mix) {
            case "uniform" -> {
                for (int k = 0; k < clients; k++) {
                    ranks[k] = random.nextInt(8, 65);
                }
            }
            case "pow2" -> {
                for (int k = 0; k < clients; k++) {
                    ranks[k] = 8 << random.nextInt(4);
                }
            }
            case "paper" -> {
                java.util.Arrays.fill(ranks, 5);
                int high = Math.max(1, (int) Math.round(0.1 * clients));
                int[] order = permutation(random, clients);
                for (int h = 0; h < high; h++) {
                    ranks[order[h]] = 20;
                }
            }
            default -> throw new IllegalArgumentException("unknown rank mix '" + mix + "'; expected paper, uniform or pow2");
        }
        return ranks;
    }

    private static int[] permutation(SplittableRandom random, int n) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) {
            p[i] = i;
        }
        for (int i = n - 1; i > 0; i--) {
            int j = random.nextInt(i + 1);
            int t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        return p;
    }

    /** Client k's weight (a sample count): 1 + (k mod 7), as in the library's tests. */
    static double weight(int k) {
        return 1 + (k % 7);
    }

    /** The round: float32 clients with values in [-1, 1), one tensor pair per module. */
    public static List<ClientUpdate> clients(String shape, String mix, int clients) {
        int[] ranks = ranks(mix, clients);
        List<ClientUpdate> out = new ArrayList<>(clients);
        for (int k = 0; k < clients; k++) {
            SplittableRandom random = new SplittableRandom(SEED * 31 + k);
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            for (Module m : modules(shape)) {
                tensors.put(m.keyA(), Tensor.of(values(random, ranks[k] * m.in()), ranks[k], m.in()));
                tensors.put(m.keyB(), Tensor.of(values(random, m.out() * ranks[k]), m.out(), ranks[k]));
            }
            out.add(ClientUpdate.of("client-" + k, weight(k), tensors));
        }
        return out;
    }

    static float[] values(SplittableRandom random, int count) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return v;
    }

    /**
     * The bytes an aggregation must move at the least, the report's GB/s numerator: every
     * client's factors read once plus the global adapter (rank = largest client rank) written
     * once, float32. Every path is divided by the same number, so GB/s compare like times.
     */
    public static long bytesMoved(String shape, String mix, int clients) {
        int[] ranks = ranks(mix, clients);
        int globalRank = 0;
        long read = 0;
        for (int r : ranks) {
            globalRank = Math.max(globalRank, r);
        }
        long written = 0;
        for (Module m : modules(shape)) {
            for (int r : ranks) {
                read += (long) r * (m.in() + m.out());
            }
            written += (long) globalRank * (m.in() + m.out());
        }
        return Float.BYTES * (read + written);
    }

    /**
     * The bytes a streaming round must move at the least, its own traffic limit: every client read
     * once, the sums it touches ({@code r_k} rows of A's, {@code r_k} columns of B's) read and
     * written once per client, then finish reads the sums and writes the global adapter once.
     */
    public static long streamingTraffic(String shape, String mix, int clients) {
        int[] ranks = ranks(mix, clients);
        int globalRank = 0;
        long clientElements = 0, globalElements = 0;
        for (int r : ranks) {
            globalRank = Math.max(globalRank, r);
        }
        for (Module m : modules(shape)) {
            for (int r : ranks) {
                clientElements += (long) r * (m.in() + m.out());
            }
            globalElements += (long) globalRank * (m.in() + m.out());
        }
        return Float.BYTES * (3 * clientElements + 2 * globalElements);
    }
}
