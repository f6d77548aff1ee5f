package io.fedlora.io;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.fedlora.LoraScale;
import java.io.IOException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * A PEFT {@code adapter_config.json}: the whole JSON object (kept, so that an output adapter
 * can carry everything the first client's config said) and the fields fedlora uses, with
 * PEFT's defaults ({@code r = 8}, {@code lora_alpha = 8}, {@code use_rslora = false}).
 *
 * <p>Pattern keys ({@code rank_pattern}, {@code alpha_pattern}) are matched as PEFT matches them:
 * key {@code k} applies to module {@code m} when {@code m} matches the regular expression
 * {@code (.*\.)?(k)$}, where {@code m} is the module's name in the base model, i.e. the
 * safetensors key without the {@code base_model.model.} prefix and the factor suffix.
 */
public final class AdapterConfig {

    static final ObjectMapper MAPPER = new ObjectMapper()
            .enable(SerializationFeature.INDENT_OUTPUT)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private final ObjectNode json;
    private final int r;
    private final double loraAlpha;
    private final boolean useRslora;
    private final Map<String, Integer> rankPattern;
    private final Map<String, Double> alphaPattern;
    private final Map<String, Pattern> alphaRegex;

    private AdapterConfig(ObjectNode json, String source) throws InvalidFileException {
        this.json = json;
        this.r = json.has("r") ? positiveInt(json.get("r"), "r", source) : 8;
        this.loraAlpha = json.has("lora_alpha") ? number(json.get("lora_alpha"), "lora_alpha", source) : 8;
        JsonNode rs = json.get("use_rslora");
        if (rs != null && !rs.isNull() && !rs.isBoolean()) {
            throw new InvalidFileException(source, "use_rslora is not true or false");
        }
        this.useRslora = rs != null && rs.asBoolean();
        this.rankPattern = new LinkedHashMap<>();
        for (var e : patternEntries(json, "rank_pattern", source).entrySet()) {
            rankPattern.put(e.getKey(), positiveInt(e.getValue(), "rank_pattern['" + e.getKey() + "']", source));
        }
        this.alphaPattern = new LinkedHashMap<>();
        this.alphaRegex = new LinkedHashMap<>();
        for (var e : patternEntries(json, "alpha_pattern", source).entrySet()) {
            String key = e.getKey();
            alphaPattern.put(key, number(e.getValue(), "alpha_pattern['" + key + "']", source));
            try {
                alphaRegex.put(key, Pattern.compile("(.*\\.)?(" + key + ")$"));
            } catch (PatternSyntaxException bad) {
                throw new InvalidFileException(source, "alpha_pattern key '" + key + "' is not a valid regular expression");
            }
        }
    }

    /** Reads and checks a config file. */
    public static AdapterConfig read(Path file) throws InvalidFileException {
        String source = file.toString();
        JsonNode node;
        try {
            node = MAPPER.readTree(file.toFile());
        } catch (JacksonException e) {
            String first = e.getOriginalMessage() == null ? "" : e.getOriginalMessage().lines().findFirst().orElse("");
            throw new InvalidFileException(source, "invalid JSON: " + first, e);
        } catch (NoSuchFileException e) {
            throw new InvalidFileException(source, "no such file", e);
        } catch (IOException e) {
            throw new InvalidFileException(source, "cannot read: " + e.getMessage(), e);
        }
        if (!(node instanceof ObjectNode object)) {
            throw new InvalidFileException(source, "is not a JSON object");
        }
        return new AdapterConfig(object, source);
    }

    /** A config over {@code json} (copied), checked as if read from {@code source}. */
    public static AdapterConfig of(ObjectNode json, String source) throws InvalidFileException {
        return new AdapterConfig(json.deepCopy(), source);
    }

    /** A minimal LoRA config, for outputs whose inputs had none. */
    public static AdapterConfig minimal(int r) {
        ObjectNode json = MAPPER.createObjectNode();
        json.put("peft_type", "LORA");
        json.put("r", r);
        try {
            return new AdapterConfig(json, "<minimal config>");
        } catch (InvalidFileException impossible) {
            throw new AssertionError(impossible);
        }
    }

    private static Map<String, JsonNode> patternEntries(ObjectNode json, String field, String source)
            throws InvalidFileException {
        JsonNode node = json.get(field);
        Map<String, JsonNode> entries = new LinkedHashMap<>();
        if (node == null || node.isNull()) {
            return entries;
        }
        if (!node.isObject()) {
            throw new InvalidFileException(source, field + " is not a JSON object");
        }
        node.properties().forEach(e -> entries.put(e.getKey(), e.getValue()));
        return entries;
    }

    private static int positiveInt(JsonNode node, String what, String source) throws InvalidFileException {
        if (node == null || !node.canConvertToInt() || !node.isIntegralNumber() || node.asInt() < 1) {
            throw new InvalidFileException(source, what + " is not a positive integer");
        }
        return node.asInt();
    }

    private static double number(JsonNode node, String what, String source) throws InvalidFileException {
        if (node == null || !node.isNumber() || !Double.isFinite(node.asDouble())) {
            throw new InvalidFileException(source, what + " is not a finite number");
        }
        return node.asDouble();
    }

    /** The whole JSON object (a copy). */
    public ObjectNode json() {
        return json.deepCopy();
    }

    /** The default rank {@code r}. */
    public int r() {
        return r;
    }

    public double loraAlpha() {
        return loraAlpha;
    }

    public boolean useRslora() {
        return useRslora;
    }

    /** Per-module ranks that differ from {@code r}, as the file gives them. */
    public Map<String, Integer> rankPattern() {
        return Collections.unmodifiableMap(rankPattern);
    }

    /** Per-module alphas that differ from {@code lora_alpha}. */
    public Map<String, Double> alphaPattern() {
        return Collections.unmodifiableMap(alphaPattern);
    }

    /** {@code lora_alpha} for a module (base-model name), after {@code alpha_pattern}. */
    public double alphaFor(String moduleName) {
        for (var e : alphaRegex.entrySet()) {
            if (e.getValue().matcher(moduleName).matches()) {
                return alphaPattern.get(e.getKey());
            }
        }
        return loraAlpha;
    }

    /**
     * PEFT's scale for a module of rank {@code rank}: {@code alpha / rank}, or
     * {@code alpha / sqrt(rank)} with rsLoRA. The module is the facade's module key (the
     * safetensors prefix), from which the {@code base_model.model.} prefix is stripped.
     */
    public LoraScale scale() {
        return (module, rank) -> alphaFor(PeftAdapter.baseModelName(module))
                / (useRslora ? Math.sqrt(rank) : rank);
    }

    /**
     * This config with {@code r = globalRank} and {@code rank_pattern} replaced by the modules
     * (base-model names) whose rank differs from it; every other field is kept.
     */
    public AdapterConfig withRanks(int globalRank, Map<String, Integer> moduleRanks) {
        ObjectNode out = json.deepCopy();
        out.put("r", globalRank);
        ObjectNode pattern = out.putObject("rank_pattern");
        moduleRanks.forEach((module, rank) -> {
            if (rank != globalRank) {
                pattern.put(module, rank);
            }
        });
        try {
            return new AdapterConfig(out, "<output config>");
        } catch (InvalidFileException e) {
            throw new IllegalArgumentException(e.getMessage(), e);
        }
    }

    /** The JSON text, indented as PEFT writes it. */
    public String toJson() {
        try {
            return MAPPER.writeValueAsString(json) + "\n";
        } catch (JacksonException e) {
            throw new IllegalStateException(e);
        }
    }
}
