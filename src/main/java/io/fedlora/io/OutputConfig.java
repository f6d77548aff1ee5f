package io.fedlora.io;

import io.fedlora.LoraScale;
import io.fedlora.PeftKeys;
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
 * The output's {@code adapter_config.json} (issue 9, README "What the output's scale means"),
 * gathered from the clients one at a time and added up like partials, so that {@code fedlora
 * aggregate} and the Spark job (whose tasks each see some clients) share one rule. It keeps the
 * first config (by client index), the distinct {@code target_modules} values with where each was
 * first seen, and per module the weighted sum and total of the clients' LoRA scales (each at its
 * own rank) with their smallest and largest. The rule: PEFT must apply, per module, the scale the
 * arithmetic assumed. Folded, the global scale the facade divided B by; not folded, the owning
 * clients' weighted mean scale (a client without a config has no known scale and does not count;
 * with no config at all the output carries scale 1); target modules, the union over the clients.
 * Merged summaries sum in their merge order, so the Spark job's means agree with the command
 * line's to rounding.
 */
public final class OutputConfig implements Serializable {

    /** Index and JSON of the first client with a config (JSON: what a Spark task ships). */
    private int firstConfigIndex = Integer.MAX_VALUE;
    private String firstConfigJson;
    /** The same config as read, where this summary has not crossed a JVM boundary. */
    private transient AdapterConfig firstConfig;
    /** Each distinct target_modules value (a String, a list of names, or null) -> the first index that had it. */
    private final Map<Object, Integer> targets = new LinkedHashMap<>();
    /** Module (base-model name) -> {sum of weight * scale, sum of weights, smallest scale, largest scale}. */
    private final Map<String, double[]> scales = new LinkedHashMap<>();

    /**
     * Records one good client: its index (client or manifest order), config (null: nothing to
     * record), module ranks and weight.
     */
    public void add(int index, AdapterConfig config, Map<String, Integer> ranks, double weight) {
        if (config == null) {
            return;
        }
        if (index < firstConfigIndex) {
            firstConfigIndex = index;
            firstConfigJson = config.toJson();
            firstConfig = config;
        }
        targets.merge(serialisable(config.targetModules()), index, Math::min);
        ranks.forEach((module, rank) -> {
            double s = config.scaleFor(module, rank);
            double[] acc = scales.computeIfAbsent(module, m -> new double[] {0, 0, Double.POSITIVE_INFINITY, 0});
            acc[0] += weight * s;
            acc[1] += weight;
            acc[2] = Math.min(acc[2], s);
            acc[3] = Math.max(acc[3], s);
        });
    }

    /** Both summaries in one (a new object; neither is changed). */
    public static OutputConfig merge(OutputConfig x, OutputConfig y) {
        OutputConfig out = new OutputConfig();
        for (OutputConfig s : List.of(x, y)) {
            if (s.firstConfigIndex < out.firstConfigIndex) {
                out.firstConfigIndex = s.firstConfigIndex;
                out.firstConfigJson = s.firstConfigJson;
                out.firstConfig = s.firstConfig;
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
     * The output's config for a global adapter of module ranks {@code outRanks}: {@code base} (a
     * config the caller chose, or null for the first client's that has one), scales as the class comment
     * says. A note is added when the clients' scales differ and are averaged.
     */
    public AdapterConfig config(AdapterConfig base, LoraScale foldScale, int globalRank, Map<String, Integer> outRanks,
            List<String> notes) throws InvalidFileException {
        if (base == null) {
            base = firstConfig;
        }
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
