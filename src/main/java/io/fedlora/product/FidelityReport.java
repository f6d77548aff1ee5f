package io.fedlora.product;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.IOException;
import java.io.StringWriter;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;

/**
 * The fidelity report (DESIGN §9): per module and overall, how far each strategy's global
 * adapter is from the exact weighted average {@code dW*} and from the rank-aware average
 * {@code dW_ra}, and what a client of each rank receives after truncation. Computed by the
 * coefficient split from one pair of float64 Gram matrices per module, never by forming
 * {@code m x n}; the figures are those of the exact-arithmetic aggregate (the float32 rounding of
 * a stored adapter, about 1e-7 relative, is not in them).
 *
 * <p>Both yardsticks are needed: against {@code dW*} REPLICATION looks worst, because {@code dW*}
 * itself dilutes the components only high-rank clients hold, while against the rank-aware
 * average, the quantity replication padding estimates, it is best.
 */
public final class FidelityReport {

    /** The strategies the report knows, by their command-line names. */
    public static final List<String> STRATEGIES = List.of("zero", "replication", "norm", "svd", "stack");

    /** One strategy on one module (or overall, with module "*"). */
    public record Row(String module, String strategy, int rank, double exactNormSquared, double exactErrorSquared,
            double rankAwareNormSquared, double rankAwareErrorSquared, int[] clientRanks, double[] exactErrorSquaredAt,
            double[] rankAwareErrorSquaredAt) {

        public double exact() {
            return ModuleFidelity.relative(exactErrorSquared, exactNormSquared);
        }

        public double rankAware() {
            return ModuleFidelity.relative(rankAwareErrorSquared, rankAwareNormSquared);
        }

        public double exactAt(int i) {
            return ModuleFidelity.relative(exactErrorSquaredAt[i], exactNormSquared);
        }

        public double rankAwareAt(int i) {
            return ModuleFidelity.relative(rankAwareErrorSquaredAt[i], rankAwareNormSquared);
        }
    }

    private final List<Row> modules;
    private final List<Row> overall;

    private FidelityReport(List<Row> modules, List<Row> overall) {
        this.modules = List.copyOf(modules);
        this.overall = List.copyOf(overall);
    }

    /** Per module and strategy, in module order. */
    public List<Row> modules() {
        return modules;
    }

    /** Per strategy over all modules: squared errors and norms summed, so large modules count more. */
    public List<Row> overall() {
        return overall;
    }

    /** The overall row of one strategy. */
    public Row overall(String strategy) {
        return overall.stream().filter(r -> r.strategy().equals(strategy)).findFirst()
                .orElseThrow(() -> new IllegalArgumentException("strategy " + strategy + " is not in the report"));
    }

    /** What the report needs of one module: its clients and the global rank each strategy writes. */
    public record ModuleInput(String module, List<ModuleFactors> clients, int globalRank) {
    }

    /**
     * Computes the report.
     *
     * @param strategies a subset of {@link #STRATEGIES}; the SVD's figures hold for either split
     */
    public static FidelityReport compute(ProductSpace space, List<ModuleInput> inputs, List<String> strategies) {
        for (String s : strategies) {
            if (!STRATEGIES.contains(s)) {
                throw new IllegalArgumentException("unknown strategy '" + s + "' for the fidelity report; expected one of "
                        + STRATEGIES);
            }
        }
        List<Row> rows = new ArrayList<>();
        for (ModuleInput in : inputs) {
            Grams g = space.grams(in.module(), in.clients());
            int maxRank = Arrays.stream(g.ranks()).max().orElse(0);
            int rank = in.globalRank() > 0 ? in.globalRank() : maxRank;
            int[] clientRanks = new TreeSet<>(Arrays.stream(g.ranks()).boxed().toList()).stream()
                    .mapToInt(Integer::intValue).toArray();
            for (String strategy : strategies) {
                Coefficients c = coefficients(space, g, in.clients(), strategy, rank);
                ModuleFidelity f = space.fidelity(g, c, clientRanks);
                int written = "stack".equals(strategy) ? g.stackRank() : rank;
                rows.add(new Row(in.module(), strategy, written, f.exactNormSquared(), f.exactErrorSquared(),
                        f.rankAwareNormSquared(), f.rankAwareErrorSquared(), clientRanks, f.exactErrorSquaredAt(),
                        f.rankAwareErrorSquaredAt()));
            }
        }
        return new FidelityReport(rows, overall(rows, strategies));
    }

    /** The coefficients of one strategy's output (DESIGN §2 and §9). */
    static Coefficients coefficients(ProductSpace space, Grams g, List<ModuleFactors> clients, String strategy,
            int rank) {
        int k = g.clients();
        return switch (strategy) {
            case "zero", "replication" -> Coefficients.factorAverage(g.ranks(), g.rawWeights(), g.scales(), rank,
                    "replication".equals(strategy));
            case "norm" -> {
                double[] v = new double[k];
                for (int c = 0; c < k; c++) {
                    v[c] = g.updateNorm(c);
                }
                yield Coefficients.factorAverage(g.ranks(), v, g.scales(), rank, false);
            }
            case "stack" -> Coefficients.stack(g.ranks(), g.rawWeights(), g.scales());
            case "svd" -> space.svd(g, clients, rank, Split.FLEXLORA, 1.0, Fill.ORTH).coefficients();
            default -> throw new IllegalArgumentException("unknown strategy " + strategy);
        };
    }

    private static List<Row> overall(List<Row> rows, List<String> strategies) {
        List<Row> out = new ArrayList<>();
        for (String strategy : strategies) {
            TreeSet<Integer> ranks = new TreeSet<>();
            for (Row r : rows) {
                if (r.strategy().equals(strategy)) {
                    for (int x : r.clientRanks()) {
                        ranks.add(x);
                    }
                }
            }
            int[] all = ranks.stream().mapToInt(Integer::intValue).toArray();
            double en = 0, ee = 0, rn = 0, re = 0;
            double[] eAt = new double[all.length], rAt = new double[all.length];
            int maxRank = 0;
            for (Row r : rows) {
                if (!r.strategy().equals(strategy)) {
                    continue;
                }
                maxRank = Math.max(maxRank, r.rank());
                en += r.exactNormSquared();
                ee += r.exactErrorSquared();
                rn += r.rankAwareNormSquared();
                re += r.rankAwareErrorSquared();
                // A module truncated to rank x: its row at the largest of its client ranks <= x, else
                // its smallest client rank's (x below every client rank of the module: truncation is the smallest).
                for (int i = 0; i < all.length; i++) {
                    int at = indexAtOrBelow(r.clientRanks(), all[i]);
                    eAt[i] += r.exactErrorSquaredAt()[at];
                    rAt[i] += r.rankAwareErrorSquaredAt()[at];
                }
            }
            out.add(new Row("*", strategy, maxRank, en, ee, rn, re, all, eAt, rAt));
        }
        return out;
    }

    private static int indexAtOrBelow(int[] sorted, int x) {
        int at = 0;
        for (int i = 0; i < sorted.length; i++) {
            if (sorted[i] <= x) {
                at = i;
            }
        }
        return at;
    }

    // ---- rendering ----------------------------------------------------------------------------

    /** A fixed-width table: the overall rows, then one block per module. */
    public String toText() {
        StringBuilder sb = new StringBuilder();
        sb.append("relative error ||target - s B A||_F / ||target||_F; target dW* = exact weighted average,\n");
        sb.append("dW_ra = rank-aware average (each component averaged over its owners); after '@r': truncated to rank r\n\n");
        appendBlock(sb, "overall", overall);
        Map<String, List<Row>> byModule = new LinkedHashMap<>();
        for (Row r : modules) {
            byModule.computeIfAbsent(r.module(), x -> new ArrayList<>()).add(r);
        }
        for (Map.Entry<String, List<Row>> e : byModule.entrySet()) {
            sb.append('\n');
            appendBlock(sb, e.getKey(), e.getValue());
        }
        return sb.toString();
    }

    private static void appendBlock(StringBuilder sb, String title, List<Row> rows) {
        Row first = rows.get(0);
        sb.append(title).append(String.format(Locale.ROOT, "  (||dW*||_F = %.4g)%n", Math.sqrt(first.exactNormSquared())));
        sb.append(String.format(Locale.ROOT, "  %-12s %5s %10s %10s", "strategy", "rank", "vs dW*", "vs dW_ra"));
        for (int r : first.clientRanks()) {
            sb.append(String.format(Locale.ROOT, " %17s", "@" + r + " dW*/dW_ra"));
        }
        sb.append('\n');
        for (Row r : rows) {
            sb.append(String.format(Locale.ROOT, "  %-12s %5d %10s %10s", r.strategy(), r.rank(), fmt(r.exact()),
                    fmt(r.rankAware())));
            for (int i = 0; i < r.clientRanks().length; i++) {
                sb.append(String.format(Locale.ROOT, " %8s/%-8s", fmt(r.exactAt(i)), fmt(r.rankAwareAt(i))));
            }
            sb.append('\n');
        }
    }

    private static String fmt(double x) {
        if (Double.isInfinite(x)) {
            return "inf";
        }
        return x != 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4) ? String.format(Locale.ROOT, "%.2e", x)
                : String.format(Locale.ROOT, "%.4f", x);
    }

    /** The report as JSON: {"overall": [...], "modules": [...]}, errors as numbers (infinity as null). */
    public String toJson() {
        StringWriter out = new StringWriter();
        try (JsonGenerator json = new JsonFactory().createGenerator(out)) {
            json.useDefaultPrettyPrinter();
            json.writeStartObject();
            json.writeStringField("target", "exact weighted average dW* and rank-aware average dW_ra");
            writeRows(json, "overall", overall);
            writeRows(json, "modules", modules);
            json.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toString() + "\n";
    }

    private static void writeRows(JsonGenerator json, String name, List<Row> rows) throws IOException {
        json.writeArrayFieldStart(name);
        for (Row r : rows) {
            json.writeStartObject();
            json.writeStringField("module", r.module());
            json.writeStringField("strategy", r.strategy());
            json.writeNumberField("rank", r.rank());
            json.writeNumberField("norm_exact", Math.sqrt(r.exactNormSquared()));
            number(json, "error_exact", r.exact());
            number(json, "error_rank_aware", r.rankAware());
            json.writeArrayFieldStart("truncated");
            for (int i = 0; i < r.clientRanks().length; i++) {
                json.writeStartObject();
                json.writeNumberField("rank", r.clientRanks()[i]);
                number(json, "error_exact", r.exactAt(i));
                number(json, "error_rank_aware", r.rankAwareAt(i));
                json.writeEndObject();
            }
            json.writeEndArray();
            json.writeEndObject();
        }
        json.writeEndArray();
    }

    private static void number(JsonGenerator json, String field, double v) throws IOException {
        if (Double.isFinite(v)) {
            json.writeNumberField(field, v);
        } else {
            json.writeNullField(field);
        }
    }
}
