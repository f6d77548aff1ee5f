package io.fedlora.cli;

import io.fedlora.Aggregator;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;
import io.fedlora.io.AdapterConfig;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.ParentCommand;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

/**
 * {@code fedlora truncate}: the download step of DESIGN §2, the first {@code r} rows of each A and
 * columns of each B of a global adapter, for a client of rank {@code r}.
 */
@Command(name = "truncate", mixinStandardHelpOptions = true,
        description = "Cut a global adapter to rank r for a client (first r components of every module).")
final class TruncateCommand implements Callable<Integer> {

    @ParentCommand
    Main main;

    @Spec
    CommandSpec spec;

    @Option(names = "--rank", required = true, paramLabel = "r", description = "The client's rank.")
    int rank;

    @Option(names = "--dtype", paramLabel = "f32|bf16|f16", converter = Options.DTypeConverter.class,
            description = "Element type of the output (default: that of the input).")
    DType dtype;

    @Option(names = "--force", description = "Replace an existing output adapter directory (as a whole).")
    boolean force;

    @Option(names = {"-o", "--output"}, required = true, paramLabel = "OUT_DIR",
            description = "Output PEFT adapter directory.")
    Path output;

    @Parameters(index = "0", paramLabel = "GLOBAL", description = "Global adapter: PEFT directory or .safetensors file.")
    Path global;

    @Override
    public Integer call() throws IOException {
        if (rank < 1) {
            throw new ParameterException(spec.commandLine(), "--rank must be at least 1");
        }
        AggregateCommand.checkRank(rank, spec);
        Inputs.check(List.of(PeftAdapter.locate(global)), output, force, spec);
        try (PeftAdapter adapter = PeftAdapter.open(global)) {
            List<PeftAdapter> open = List.of(adapter);
            Map<String, Tensor> input = adapter.tensors();
            Map<String, Tensor> cut;
            try {
                cut = AggregateCommand.readingGuard(open, () -> Aggregator.truncate(input, rank));
            } catch (IllegalArgumentException e) {
                throw new InvalidFileException(global.toString(), e.getMessage(), e);
            }
            // Truncation is a pure copy: keep each tensor's own dtype unless asked otherwise.
            Map<String, Tensor> typed = new LinkedHashMap<>();
            cut.forEach((key, t) -> {
                Tensor in = input.get(key);
                typed.put(key, dtype != null || in == null ? t : t.to(in.dtype()));
            });
            AdapterConfig config = outputConfig(adapter.config(), PeftAdapter.moduleRanks(input),
                    PeftAdapter.moduleRanks(typed));
            AggregateCommand.checkUnchanged(open);
            AggregateCommand.readingGuard(open, () -> {
                PeftAdapter.write(output, output.toString(), force, typed, dtype, config, adapter.metadata());
                return null;
            });
        }
        main.out.println(output + ": rank " + rank + " cut of " + global);
        return Main.OK;
    }

    /**
     * Keeps every kept component's scale (issue 9): a module of rank r with scale s (PEFT's
     * alpha / r or alpha / sqrt(r)) is written at rank r' with the same s, i.e.
     * alpha' = alpha r' / r (rsLoRA: alpha sqrt(r' / r)), per module through alpha_pattern where
     * modules differ. An input without a config has no known scale; the output carries scale 1.
     */
    static AdapterConfig outputConfig(AdapterConfig base, Map<String, Integer> inRanks, Map<String, Integer> outRanks) {
        Map<String, Double> scales = new LinkedHashMap<>();
        outRanks.forEach((module, r) -> scales.put(module,
                base == null ? 1.0 : base.scaleFor(module, inRanks.get(module))));
        int globalRank = outRanks.values().stream().mapToInt(Integer::intValue).max().orElse(1);
        return AdapterConfig.forOutput(base, globalRank, outRanks, scales, base != null && base.useRslora(), null);
    }
}
