package io.fedlora.examples;

// tag::imports[]
import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.InvalidUpdateException;
import io.fedlora.Partial;
import io.fedlora.Policy;
import io.fedlora.Round;
import io.fedlora.Strategy;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.PeftAdapter;
import io.fedlora.io.Safetensors;
import io.fedlora.kernels.Backends;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
// end::imports[]
import java.nio.file.Files;
import java.util.SplittableRandom;

/**
 * The README's "Using it from Java" snippets, verbatim: the README includes each region between
 * {@code tag::NAME[]} and {@code end::NAME[]}, ExamplesTest fails when the two differ and runs
 * every example, and {@code src/test/install/check} compiles this file against the installed jar
 * alone (a separate Maven project with the one dependency) and runs {@link #main}.
 * Only the public API is used here.
 */
public final class Examples {
    private Examples() {
    }

    // tag::setup[]
    /** One aggregator per policy, kept for the server's life; the backend is chosen once per JVM. */
    static Aggregator newAggregator() {
        Aggregator aggregator = Aggregator.of(Policy.of(Strategy.REPLICATION) // or ZERO, NORM
                .withGlobalRank(0));            // 0: each module takes its largest client rank
        Backends.Report backend = Backends.report();
        System.out.println("fedlora backend: " + aggregator.backendName() + " (" + backend.description() + ")");
        if (backend.warning() != null) {        // below the best this machine could run, and why
            System.out.println("fedlora: " + backend.warning());
        }
        return aggregator;
    }
    // end::setup[]

    // tag::batch[]
    /** Batch: weighted clients (PEFT name -> tensor) in, the global adapter (float32) out. */
    static Map<String, Tensor> batch(Aggregator aggregator, Map<String, Tensor> phone, Map<String, Tensor> laptop) {
        return aggregator.aggregate(List.of(
                ClientUpdate.of("phone-17", 120, phone),     // e.g. rank 4
                ClientUpdate.of("laptop-3", 800, laptop)));  // e.g. rank 16
    }
    // end::batch[]

    // tag::streaming[]
    /**
     * Streaming: clients are added as they arrive, from any number of threads, and memory stays
     * at one global adapter. Rounds filled apart (two request threads, two servers) merge.
     */
    static Map<String, Tensor> streaming(Aggregator aggregator, List<ClientUpdate> east, List<ClientUpdate> west) {
        try (Round round = aggregator.newRound(); Round other = aggregator.newRound()) {
            east.parallelStream().forEach(client -> addOrSkip(round, client));
            west.forEach(client -> addOrSkip(other, client));
            round.merge(other);                 // equal policies; 'other' is left as it was
            return round.finish();              // the sums are kept: add more, finish again
        }
    }

    /** A client no strategy can use is refused whole, and the round is exactly as it was. */
    static void addOrSkip(Round round, ClientUpdate client) {
        try {
            round.add(client);
        } catch (InvalidUpdateException e) {    // names the client, the module and the problem
            System.out.println("skipped " + e.clientId() + ": " + e.getMessage());
        }
    }
    // end::streaming[]

    // tag::partial[]
    /** Between servers: a round's partial sums as a safetensors file, merged into a round elsewhere. */
    static void sendPartial(Round round, Path file) throws IOException {
        Partial partial = round.toPartial();    // a consistent snapshot, while adds go on
        Safetensors.write(file, partial.tensors(), partial.metadata());
    }

    static void receivePartial(Round round, Path file) throws IOException {
        try (Safetensors received = Safetensors.open(file)) {
            round.mergePartial(Partial.of(received.tensors(), received.metadata()));
        }
    }
    // end::partial[]

    // tag::download[]
    /** Download: what a client of rank 4 gets back (the first 4 rows of each A, columns of each B). */
    static Map<String, Tensor> forClient(Map<String, Tensor> global, int clientRank) {
        return Aggregator.truncate(global, clientRank);
    }
    // end::download[]

    // tag::peft[]
    /**
     * PEFT adapter directories (adapter_model.safetensors + adapter_config.json) in, one out. The
     * inputs are memory-mapped and read in place; the output is written under a temporary name
     * and renamed, so a failure leaves nothing at outDir.
     */
    static void aggregateDirectories(Aggregator aggregator, List<Path> clientDirs, List<Double> weights, Path outDir)
            throws IOException {
        List<PeftAdapter> adapters = new ArrayList<>();
        try {
            List<ClientUpdate> updates = new ArrayList<>();
            for (int k = 0; k < clientDirs.size(); k++) {
                PeftAdapter adapter = PeftAdapter.open(clientDirs.get(k));
                adapters.add(adapter);
                updates.add(adapter.toUpdate(clientDirs.get(k).getFileName().toString(), weights.get(k)));
            }
            Map<String, Tensor> global = aggregator.aggregate(updates);
            Map<String, Integer> ranks = PeftAdapter.moduleRanks(global);
            int globalRank = Collections.max(ranks.values());
            // r, rank_pattern and lora_alpha/alpha_pattern such that PEFT applies each module with
            // the first client's LoRA scale (clients whose scales differ: Policy.withFoldScale).
            AdapterConfig first = adapters.get(0).config();
            Map<String, Integer> firstRanks = PeftAdapter.moduleRanks(adapters.get(0).tensors());
            Map<String, Double> scales = new LinkedHashMap<>();
            ranks.keySet().forEach(module -> scales.put(module, first.scaleFor(module, firstRanks.get(module))));
            AdapterConfig config = AdapterConfig.forOutput(first, globalRank, ranks, scales, first.useRslora(), null);
            PeftAdapter.write(outDir, outDir.toString(), true, global, DType.F32, config, Map.of());
        } finally {
            adapters.forEach(PeftAdapter::close);   // the tensors were views into the mappings
        }
    }
    // end::peft[]

    // ---- what runs the examples outside the tests (the install check) ----------------------------

    /** A client adapter of {@code rank} on two DistilBERT-sized modules, seeded. */
    static Map<String, Tensor> adapter(int rank, long seed) {
        SplittableRandom random = new SplittableRandom(seed);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (String module : List.of("q_lin", "ffn.lin1")) {
            int in = 768;
            int out = module.equals("q_lin") ? 768 : 3072;
            String key = "base_model.model.distilbert.transformer.layer.0." + module;
            tensors.put(key + ".lora_A.weight", Tensor.of(values(random, rank * in), rank, in));
            tensors.put(key + ".lora_B.weight", Tensor.of(values(random, out * rank), out, rank));
        }
        return tensors;
    }

    static float[] values(SplittableRandom random, int count) {
        float[] values = new float[count];
        for (int i = 0; i < count; i++) {
            values[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return values;
    }

    /** A client's adapter_config.json with lora_alpha = 2 r (PEFT's scale alpha / r = 2 at every rank). */
    static AdapterConfig config(int rank) throws IOException {
        return AdapterConfig.of(Map.of("peft_type", "LORA", "r", rank, "lora_alpha", 2 * rank), "<example r=" + rank + ">");
    }

    /** Every example once, on generated adapters; prints one line each and "examples: ok". */
    public static void main(String[] args) throws IOException {
        Path work = Files.createTempDirectory("fedlora-examples-");
        try (Aggregator aggregator = newAggregator()) {
            Map<String, Tensor> phone = adapter(4, 1);
            Map<String, Tensor> laptop = adapter(16, 2);
            Map<String, Tensor> global = batch(aggregator, phone, laptop);
            System.out.println("batch: " + global.size() + " tensors, " + PeftAdapter.moduleRanks(global));
            Map<String, Tensor> streamed = streaming(aggregator,
                    List.of(ClientUpdate.of("phone-17", 120, phone)), List.of(ClientUpdate.of("laptop-3", 800, laptop)));
            System.out.println("streaming: " + streamed.size() + " tensors");
            try (Round here = aggregator.newRound(); Round there = aggregator.newRound()) {
                there.add(ClientUpdate.of("laptop-3", 800, laptop));
                sendPartial(there, work.resolve("partial.safetensors"));
                here.add(ClientUpdate.of("phone-17", 120, phone));
                receivePartial(here, work.resolve("partial.safetensors"));
                System.out.println("partial: " + here.clientCount() + " clients");
            }
            System.out.println("download: " + PeftAdapter.moduleRanks(forClient(global, 4)));
            PeftAdapter.write(work.resolve("phone"), phone, DType.BF16, config(4), Map.of(), 4);
            PeftAdapter.write(work.resolve("laptop"), laptop, DType.BF16, config(16), Map.of(), 16);
            aggregateDirectories(aggregator, List.of(work.resolve("phone"), work.resolve("laptop")),
                    List.of(120.0, 800.0), work.resolve("global"));
            try (PeftAdapter written = PeftAdapter.open(work.resolve("global"))) {
                System.out.println("peft: " + written.tensors().size() + " tensors, r = " + written.config().r());
            }
            System.out.println("examples: ok");
        } finally {
            try (var walk = Files.walk(work)) {
                for (Path p : walk.sorted(java.util.Comparator.reverseOrder()).toList()) {
                    Files.deleteIfExists(p);
                }
            }
        }
    }
}
