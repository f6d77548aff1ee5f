package io.fedlora.io;

import com.fasterxml.jackson.core.JacksonException;
import io.fedlora.Json;
import java.math.BigInteger;
import io.fedlora.LoraScale;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashSet;
import java.util.Set;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * A PEFT {@code adapter_config.json}: the whole JSON object (kept, so that an output adapter
 * can carry everything the first client's config said) and the fields fedlora uses, with
 * PEFT's defaults ({@code r = 8}, {@code lora_alpha = 8}, {@code use_rslora = false}).
 *
 * <p>The JSON is held as plain maps and lists ({@code String}, {@code Boolean}, {@code null},
 * {@code Long}/{@code BigInteger}/{@code Double}, {@code List}, {@code Map}) read with
 * jackson-core's streaming parser: jackson-databind's start-up alone costs a command-line run
 * a few hundred milliseconds.
 *
 * <p>Pattern keys ({@code rank_pattern}, {@code alpha_pattern}) are matched as PEFT matches them:
 * key {@code k} applies to module {@code m} when {@code m} matches the regular expression
 * {@code (.*\.)?(k)$}, where {@code m} is the module's name in the base model, i.e. the
 * safetensors key without the {@code base_model.model.} prefix and the factor suffix.
 */
public final class AdapterConfig {

    private final Map<String, Object> json;
    private final int r;
    private final double loraAlpha;
    private final boolean useRslora;
    private final Map<String, Integer> rankPattern;
    private final Map<String, Double> alphaPattern;
    private final Map<String, Pattern> alphaRegex;
    private final Map<String, Pattern> rankRegex;

    private AdapterConfig(Map<String, Object> json, String source) throws InvalidFileException {
        this.json = json;
        this.r = json.get("r") != null ? positiveInt(json.get("r"), "r", source) : 8;
        this.loraAlpha = json.get("lora_alpha") != null ? positive(json.get("lora_alpha"), "lora_alpha", source) : 8;
        Object rs = json.get("use_rslora");
        if (rs != null && !(rs instanceof Boolean)) {
            throw new InvalidFileException(source, "use_rslora is not true or false");
        }
        this.useRslora = Boolean.TRUE.equals(rs);
        this.rankPattern = new LinkedHashMap<>();
        this.rankRegex = new LinkedHashMap<>();
        for (var e : patternEntries(json, "rank_pattern", source).entrySet()) {
            rankPattern.put(e.getKey(), positiveInt(e.getValue(), "rank_pattern['" + e.getKey() + "']", source));
            try {
                rankRegex.put(e.getKey(), Pattern.compile("(.*\\.)?(" + e.getKey() + ")$"));
            } catch (PatternSyntaxException bad) {
                throw new InvalidFileException(source, "rank_pattern key '" + e.getKey() + "' is not a valid regular expression");
            }
        }
        this.alphaPattern = new LinkedHashMap<>();
        this.alphaRegex = new LinkedHashMap<>();
        for (var e : patternEntries(json, "alpha_pattern", source).entrySet()) {
            String key = e.getKey();
            alphaPattern.put(key, positive(e.getValue(), "alpha_pattern['" + key + "']", source));
            try {
                alphaRegex.put(key, Pattern.compile("(.*\\.)?(" + key + ")$"));
            } catch (PatternSyntaxException bad) {
                throw new InvalidFileException(source, "alpha_pattern key '" + key + "' is not a valid regular expression");
            }
        }
    }

    /** Reads and checks a config file. */
    public static AdapterConfig read(Path file) throws InvalidFileException {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (NoSuchFileException e) {
            throw new InvalidFileException(file.toString(), "no such file", e);
        } catch (IOException e) {
            throw new InvalidFileException(file.toString(), "cannot read: " + Messages.reason(e), e);
        }
        return parse(bytes, file.toString());
    }

    /**
     * Checks a config held in memory (fetched from a remote store, say): {@code bytes} are those
     * of an {@code adapter_config.json}, strict UTF-8; {@code source} names it in error messages.
     */
    public static AdapterConfig parse(byte[] bytes, String source) throws InvalidFileException {
        String text = decodeUtf8(bytes, source);
        Object value;
        try {
            value = Json.parse(text);
        } catch (JacksonException e) {
            String first = e.getOriginalMessage() == null ? "" : e.getOriginalMessage().lines().findFirst().orElse("");
            throw new InvalidFileException(source, "invalid JSON: " + first, e);
        } catch (IOException e) {
            throw new InvalidFileException(source, "invalid JSON: " + e.getMessage(), e);
        }
        if (!(value instanceof Map<?, ?> object)) {
            throw new InvalidFileException(source, "is not a JSON object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> json = (Map<String, Object>) object;
        return new AdapterConfig(json, source);
    }

    /** Strict UTF-8 (as JSON files must be), naming the first bad byte. */
    private static String decodeUtf8(byte[] bytes, String source) throws InvalidFileException {
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(bytes);
        CharBuffer out = CharBuffer.allocate(bytes.length);
        CoderResult result = decoder.decode(in, out, true);
        if (result.isError()) {
            int offset = in.position();
            throw new InvalidFileException(source, String.format(java.util.Locale.ROOT,
                    "is not valid UTF-8 (byte 0x%02X at offset %d); JSON files are UTF-8", bytes[offset] & 0xff, offset));
        }
        decoder.flush(out);
        return out.flip().toString();
    }

    /** A config over {@code json} (deep-copied), checked as if read from {@code source}. */
    public static AdapterConfig of(Map<String, ?> json, String source) throws InvalidFileException {
        return new AdapterConfig(copyObject(json), source);
    }

    /** A minimal LoRA config, for outputs whose inputs had none. */
    public static AdapterConfig minimal(int r) {
        Map<String, Object> json = new LinkedHashMap<>();
        json.put("peft_type", "LORA");
        json.put("r", (long) r);
        try {
            return new AdapterConfig(json, "<minimal config>");
        } catch (InvalidFileException impossible) {
            throw new AssertionError(impossible);
        }
    }

    private static Map<String, Object> copyObject(Map<String, ?> object) {
        Map<String, Object> copy = new LinkedHashMap<>();
        object.forEach((k, v) -> copy.put(k, copyValue(v)));
        return copy;
    }

    private static Object copyValue(Object value) {
        if (value instanceof Map<?, ?> map) {
            Map<String, Object> copy = new LinkedHashMap<>();
            map.forEach((k, v) -> copy.put(String.valueOf(k), copyValue(v)));
            return copy;
        }
        if (value instanceof List<?> list) {
            List<Object> copy = new ArrayList<>();
            list.forEach(v -> copy.add(copyValue(v)));
            return copy;
        }
        return value;
    }

    private static Map<String, Object> patternEntries(Map<String, Object> json, String field, String source)
            throws InvalidFileException {
        Object node = json.get(field);
        Map<String, Object> entries = new LinkedHashMap<>();
        if (node == null) {
            return entries;
        }
        if (!(node instanceof Map<?, ?> map)) {
            throw new InvalidFileException(source, field + " is not a JSON object");
        }
        map.forEach((k, v) -> entries.put(String.valueOf(k), v));
        return entries;
    }

    private static int positiveInt(Object value, String what, String source) throws InvalidFileException {
        boolean integral = value instanceof Long || value instanceof Integer || value instanceof BigInteger;
        if (!integral || ((Number) value).doubleValue() < 1 || ((Number) value).doubleValue() > Integer.MAX_VALUE) {
            throw new InvalidFileException(source, what + " is not a positive integer");
        }
        return ((Number) value).intValue();
    }

    /** A LoRA alpha: PEFT's scale is alpha / r, and fedlora's LoraScale takes positive values only. */
    private static double positive(Object value, String what, String source) throws InvalidFileException {
        double v = number(value, what, source);
        if (!(v > 0)) {
            throw new InvalidFileException(source, what + " is " + value + "; it must be a positive number");
        }
        return v;
    }

    private static double number(Object value, String what, String source) throws InvalidFileException {
        if (!(value instanceof Number n) || !Double.isFinite(n.doubleValue())) {
            throw new InvalidFileException(source, what + " is not a finite number");
        }
        return n.doubleValue();
    }

    /** The whole JSON object (a deep copy). */
    public Map<String, Object> json() {
        return copyObject(json);
    }

    /** {@code target_modules} as the file has it: a list of names, a regex string, or null. */
    public Object targetModules() {
        return copyValue(json.get("target_modules"));
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

    /** {@code r} for a module (base-model name), after {@code rank_pattern}: the rank PEFT builds it with. */
    public int rankFor(String moduleName) {
        for (var e : rankRegex.entrySet()) {
            if (e.getValue().matcher(moduleName).matches()) {
                return rankPattern.get(e.getKey());
            }
        }
        return r;
    }

    /**
     * The scale PEFT applies to {@code B A} of a module (base-model name) whose factors have rank
     * {@code rank}: {@code alpha / rank}, or {@code alpha / sqrt(rank)} with rsLoRA, alpha after
     * {@code alpha_pattern}.
     */
    public double scaleFor(String moduleName, int rank) {
        return alphaFor(moduleName) / (useRslora ? Math.sqrt(rank) : rank);
    }

    /**
     * PEFT's scale for a module of rank {@code rank}: {@code alpha / rank}, or
     * {@code alpha / sqrt(rank)} with rsLoRA. The module is the facade's module key (the
     * safetensors prefix), from which the {@code base_model.model.} prefix is stripped.
     */
    public LoraScale scale() {
        return new LoraScale(loraAlpha, useRslora, alphaPattern);
    }

    /**
     * This config with {@code r = globalRank} and {@code rank_pattern} replaced by the modules
     * (base-model names) whose rank differs from it; every other field is kept. (For writing
     * clients in tests and the demo; outputs use {@link #forOutput}.)
     */
    public AdapterConfig withRanks(int globalRank, Map<String, Integer> moduleRanks) {
        Map<String, Object> out = copyObject(json);
        out.put("r", (long) globalRank);
        Map<String, Object> pattern = new LinkedHashMap<>();
        moduleRanks.forEach((module, rank) -> {
            if (rank != globalRank) {
                pattern.put(module, (long) rank);
            }
        });
        out.put("rank_pattern", pattern);
        try {
            return new AdapterConfig(out, "<output config>");
        } catch (InvalidFileException e) {
            throw new IllegalArgumentException(e.getMessage(), e);
        }
    }

    /**
     * The config of an output adapter whose modules (base-model names) have these ranks and must
     * act, under PEFT, with these scales (issue 9: the written config means what the arithmetic
     * assumed). Every field of {@code base} (null: a minimal config) is kept except:
     * <ul>
     * <li>{@code r = globalRank} and {@code rank_pattern} for every module of another rank;
     * <li>{@code use_rslora = rsLora}; {@code lora_alpha} is the most common of the per-module
     *     alphas {@code scale * rank} (rsLoRA: {@code scale * sqrt(rank)}) and {@code alpha_pattern}
     *     holds the modules whose alpha differs;
     * <li>{@code target_modules = targetModules} (null: base's), extended by the full name of any
     *     module it would not match, so that PEFT creates every layer the weights are for.
     * </ul>
     * Pattern keys are full module names, longest first; PEFT takes the first key that matches a
     * module as a suffix (regex {@code (.*\.)?(key)$}), and a module that some other module's key
     * would match gets its own key, so each module resolves to exactly its own rank and alpha
     * (checked here with PEFT's rule, {@link #rankFor} and {@link #alphaFor}).
     */
    public static AdapterConfig forOutput(AdapterConfig base, int globalRank, Map<String, Integer> ranks,
            Map<String, Double> scales, boolean rsLora, Object targetModules) {
        Map<String, Object> out = base == null ? new LinkedHashMap<>(Map.of("peft_type", "LORA")) : copyObject(base.json);
        Map<String, Double> alphas = new LinkedHashMap<>();
        Map<Double, Integer> counts = new LinkedHashMap<>();
        ranks.forEach((module, rank) -> {
            double scale = scales.get(module);
            double alpha = scale * (rsLora ? Math.sqrt(rank) : rank);
            alphas.put(module, alpha);
            counts.merge(alpha, 1, Integer::sum);
        });
        double loraAlpha = counts.entrySet().stream().max(Map.Entry.comparingByValue())
                .map(Map.Entry::getKey).orElse(8.0);
        out.put("r", (long) globalRank);
        out.put("lora_alpha", jsonNumber(loraAlpha));
        out.put("use_rslora", rsLora);
        Set<String> rankKeys = new HashSet<>();
        Set<String> alphaKeys = new HashSet<>();
        ranks.forEach((module, rank) -> {
            if (rank != globalRank) {
                rankKeys.add(module);
            }
            if (alphas.get(module) != loraAlpha) {
                alphaKeys.add(module);
            }
        });
        Object targets = targetModules != null ? targetModules : out.get("target_modules");
        out.put("target_modules", TargetModules.covering(targets, ranks.keySet()));
        for (int round = 0; ; round++) {
            out.put("rank_pattern", pattern(rankKeys, module -> (Object) (long) ranks.get(module)));
            out.put("alpha_pattern", pattern(alphaKeys, module -> jsonNumber(alphas.get(module))));
            AdapterConfig config;
            try {
                config = new AdapterConfig(out, "<output config>");
            } catch (InvalidFileException e) {
                throw new IllegalArgumentException(e.getMessage(), e);
            }
            boolean fixed = true;
            for (String module : ranks.keySet()) {
                if (config.rankFor(module) != ranks.get(module) && rankKeys.add(module)) {
                    fixed = false;
                }
                if (config.alphaFor(module) != alphas.get(module) && alphaKeys.add(module)) {
                    fixed = false;
                }
            }
            if (fixed) {
                return config;
            }
            if (round > ranks.size() + 1) {
                throw new IllegalStateException("cannot write rank_pattern/alpha_pattern that resolve every module");
            }
        }
    }

    /** Keys longest first (a module's own full name comes before any shorter suffix of it). */
    private static Map<String, Object> pattern(Set<String> keys, java.util.function.Function<String, Object> value) {
        List<String> sorted = new ArrayList<>(keys);
        sorted.sort(Comparator.comparingInt(String::length).reversed().thenComparing(Comparator.naturalOrder()));
        Map<String, Object> pattern = new LinkedHashMap<>();
        sorted.forEach(k -> pattern.put(k, value.apply(k)));
        return pattern;
    }

    /** An integral alpha as a JSON integer (as PEFT users write it), else a double. */
    private static Object jsonNumber(double value) {
        return value == Math.rint(value) && Math.abs(value) < 1e15 ? (Object) (long) value : (Object) value;
    }

    /** The JSON text, indented, as PEFT writes it. */
    public String toJson() {
        return Json.write(json, true) + "\n";
    }
}
