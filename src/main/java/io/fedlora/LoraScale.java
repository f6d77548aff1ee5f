package io.fedlora;

import java.io.Serializable;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Pattern;

/**
 * The factor PEFT multiplies {@code B A} by, as a value: {@code alpha / r}, or
 * {@code alpha / sqrt(r)} with rsLoRA ({@code use_rslora}), where {@code alpha} is
 * {@code lora_alpha} unless an {@code alpha_pattern} key matches the module. Keys match as PEFT
 * matches them: the module's base-model name (its key without {@code base_model.model.}) ends
 * with the key, as a regular expression, at a dot boundary.
 *
 * <p>Values with equal fields are equal, so a {@link Policy} that folds scales compares by value.
 *
 * @param alpha {@code lora_alpha}; positive and finite
 * @param rsLora true for {@code alpha / sqrt(r)}
 * @param alphaPattern {@code alpha_pattern}, key to alpha; may be empty, never null
 */
public record LoraScale(double alpha, boolean rsLora, Map<String, Double> alphaPattern) implements Serializable {

    private static final Map<String, Pattern> PATTERNS = new ConcurrentHashMap<>();

    public LoraScale {
        checkAlpha(alpha, "lora_alpha");
        Objects.requireNonNull(alphaPattern, "alphaPattern");
        Map<String, Double> copy = new LinkedHashMap<>();
        alphaPattern.forEach((key, value) -> {
            checkAlpha(value, "alpha_pattern['" + key + "']");
            copy.put(Objects.requireNonNull(key, "alpha_pattern key"), value);
        });
        alphaPattern = Collections.unmodifiableMap(copy);
    }

    /** PEFT's default: {@code alpha / r}. */
    public static LoraScale alphaOverRank(double alpha) {
        return new LoraScale(alpha, false, Map.of());
    }

    /** rsLoRA: {@code alpha / sqrt(r)}. */
    public static LoraScale rsLora(double alpha) {
        return new LoraScale(alpha, true, Map.of());
    }

    /** The alpha of {@code module} (a facade module key), after {@code alpha_pattern}. */
    public double alphaFor(String module) {
        if (alphaPattern.isEmpty()) {
            return alpha;
        }
        String name = PeftKeys.baseModelName(module);
        for (Map.Entry<String, Double> e : alphaPattern.entrySet()) {
            Pattern p = PATTERNS.computeIfAbsent(e.getKey(), key -> Pattern.compile("(.*\\.)?(" + key + ")$"));
            if (p.matcher(name).matches()) {
                return e.getValue();
            }
        }
        return alpha;
    }

    /** The scale of {@code module} at rank {@code rank}. */
    public double of(String module, int rank) {
        if (rank < 1) {
            throw new IllegalArgumentException("rank must be >= 1, got " + rank);
        }
        double a = alphaFor(module);
        return rsLora ? a / Math.sqrt(rank) : a / rank;
    }

    private static void checkAlpha(double value, String what) {
        if (!(value > 0) || !Double.isFinite(value)) {
            throw new IllegalArgumentException(what + " must be positive and finite, got " + value);
        }
    }
}
