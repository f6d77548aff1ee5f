package io.fedlora.spark;

import io.fedlora.LoraScale;
import io.fedlora.PeftKeys;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import io.fedlora.io.TargetModules;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * What the output's {@code adapter_config.json} needs from the clients, gathered by the tasks and
 * added up like the partials: the first config (by manifest order), the distinct
 * {@code target_modules} values with where each was first seen, and per module the weighted sum
 * and total of the clients' LoRA scales (each at its own rank) with their smallest and largest.
 * The rule is {@code fedlora aggregate}'s (must match AggregateCommand.Job.outputConfig): folded,
 * the global scale; not folded, the owning clients' weighted mean scale; target modules, the union
 * over the clients. The means are summed in another order than there, so they agree to rounding.
 */
final class ConfigSummary implements Serializable {

    /** Manifest index and JSON of the first client with a config. */
    private int firstConfigIndex = Integer.MAX_VALUE;
    private String firstConfigJson;
    /** Each distinct target_modules value (a String, a list of names, or null) -> the first index that had it. */
    private final Map<Object, Integer> targets = new LinkedHashMap<>();
    /** Module (base-model name) -> {sum of weight * scale, sum of weights, smallest scale, largest scale}. */
    private final Map<String, double[]> scales = new LinkedHashMap<>();

    /** Records one good client: its manifest index, adapter and weight. */
    void add(int index, PeftAdapter adapter, double weight) {
        AdapterConfig config = adapter.config();
        if (config == null) {
            return;
        }
        if (index < firstConfigIndex) {
            firstConfigIndex = index;
            firstConfigJson = config.toJson();
        }
        targets.merge(serialisable(config.targetModules()), index, Math::min);
        PeftAdapter.moduleRanks(adapter.tensors()).forEach((module, rank) -> {
            double s = config.scaleFor(module, rank);
            double[] acc = scales.computeIfAbsent(module, m -> new double[] {0, 0, Double.POSITIVE_INFINITY, 0});
            acc[0] += weight * s;
            acc[1] += weight;
            acc[2] = Math.min(acc[2], s);
            acc[3] = Math.max(acc[3], s);
        });
    }

    /** Both summaries in one (a new object; neither is changed). */
    static ConfigSummary merge(ConfigSummary x, ConfigSummary y) {
        ConfigSummary out = new ConfigSummary();
        for (ConfigSummary s : List.of(x, y)) {
            if (s.firstConfigIndex < out.firstConfigIndex) {
                out.firstConfigIndex = s.firstConfigIndex;
                out.firstConfigJson = s.firstConfigJson;
            }
            s.targets.forEach((value, index) -> out.targets.merge(value, index, Math::min));
            s.scales.forEach((module, acc) -> {
                double[] o = out.scales.computeIfAbsent(module, m -> new double[] {0, 0, Double.POSITIVE_INFINITY, 0});
                o[0] += acc[0];
                o[1] += acc[1];
                o[2] = Math.min(o[2], acc[2]);
                o[3] = Math.max(o[3], acc[3]);
            });
        }
        return out;
    }

    /**
     * The output's config for a global adapter of module ranks {@code outRanks}: {@code base} (the
     * first client's config, or else the first config of any client), scales as the class comment
     * says. A note is added when the clients' scales differ and are averaged.
     */
    AdapterConfig config(AdapterConfig base, LoraScale foldScale, int globalRank, Map<String, Integer> outRanks,
            List<String> notes) throws InvalidFileException {
        if (base == null && firstConfigJson != null) {
            base = AdapterConfig.parse(firstConfigJson.getBytes(StandardCharsets.UTF_8), "the first client's config");
        }
        Map<String, Double> out = new LinkedHashMap<>();
        for (var e : outRanks.entrySet()) {
            String module = e.getKey();
            if (foldScale != null) {
                out.put(module, foldScale.of(PeftKeys.BASE_MODEL_PREFIX + module, e.getValue()));
                continue;
            }
            double[] acc = scales.get(module);
            boolean known = acc != null && acc[1] > 0;
            out.put(module, known ? acc[0] / acc[1] : 1.0);
            if (known && acc[2] != acc[3] && notes.isEmpty()) {
                notes.add(String.format(Locale.ROOT, "the clients' LoRA scales differ (module %s: %.4g to %.4g); "
                        + "the output carries their weighted mean; --scale fold keeps each client's", module, acc[2], acc[3]));
            }
        }
        List<Object> inOrder = new ArrayList<>();
        targets.entrySet().stream().sorted(Map.Entry.comparingByValue(Comparator.naturalOrder()))
                .forEach(e -> inOrder.add(e.getKey()));
        boolean rsLora = base != null && base.useRslora();
        return AdapterConfig.forOutput(base, globalRank, outRanks, out, rsLora,
                inOrder.isEmpty() ? null : TargetModules.union(inOrder));
    }

    /** A target_modules value as a serialisable key: a string, a list of strings, or null. */
    private static Object serialisable(Object value) {
        if (value instanceof Collection<?> names) {
            List<String> copy = new ArrayList<>();
            names.forEach(n -> copy.add(String.valueOf(n)));
            return copy;
        }
        return value instanceof String ? value : null;
    }
}
