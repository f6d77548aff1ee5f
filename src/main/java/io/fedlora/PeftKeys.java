package io.fedlora;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The one table of PEFT key names in fedlora. A LoRA module {@code X} is a pair of factors saved
 * as {@code X.lora_A.weight} / {@code X.lora_B.weight} (linear layers) or
 * {@code X.lora_embedding_A} / {@code X.lora_embedding_B} (embeddings, saved without
 * {@code .weight}); a raw state dict puts the adapter name after the factor
 * ({@code X.lora_A.default.weight}, {@code X.lora_embedding_A.default}). Both layouts are A
 * {@code [r, in]} and B {@code [out, r]}. The module is {@code X} whichever layout a client used.
 */
public final class PeftKeys {

    /** What PEFT puts before a base model's own module names. */
    public static final String BASE_MODEL_PREFIX = "base_model.model.";

    private static final Pattern LINEAR = Pattern.compile("(.+)\\.lora_([AB])(?:\\.([^.]+))?\\.weight");
    private static final Pattern EMBEDDING = Pattern.compile("(.+)\\.lora_embedding_([AB])(?:\\.([^.]+))?");

    private PeftKeys() {
    }

    /**
     * A LoRA factor key, taken apart.
     *
     * @param adapter the adapter name between factor and {@code weight}, or null when saved without one
     */
    public record Key(String key, String module, Aggregator.Factor factor, String adapter, boolean embedding) {

        /** The key of the other factor of the same module, in the same layout. */
        public String partner() {
            return keyOf(module, factor == Aggregator.Factor.A ? Aggregator.Factor.B : Aggregator.Factor.A, adapter, embedding);
        }
    }

    /** {@code key} taken apart, or null when it is not a LoRA factor (a tensor averaged as it is). */
    public static Key parse(String key) {
        Matcher m = LINEAR.matcher(key);
        boolean embedding = false;
        if (!m.matches()) {
            m = EMBEDDING.matcher(key);
            embedding = true;
            if (!m.matches()) {
                return null;
            }
        }
        return new Key(key, m.group(1), Aggregator.Factor.valueOf(m.group(2)), m.group(3), embedding);
    }

    /** The key of {@code factor} of {@code module} in the given layout. */
    public static String keyOf(String module, Aggregator.Factor factor, String adapter, boolean embedding) {
        String name = (embedding ? ".lora_embedding_" : ".lora_") + factor.name();
        String tail = adapter == null ? "" : "." + adapter;
        return module + name + tail + (embedding ? "" : ".weight");
    }

    /** A module key without PEFT's {@code base_model.model.} prefix: the name a config's patterns match. */
    public static String baseModelName(String module) {
        return module.startsWith(BASE_MODEL_PREFIX) ? module.substring(BASE_MODEL_PREFIX.length()) : module;
    }
}
