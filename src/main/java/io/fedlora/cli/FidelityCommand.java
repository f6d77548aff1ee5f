package io.fedlora.cli;

import io.fedlora.Aggregator;
import io.fedlora.ClientUpdate;
import io.fedlora.InvalidUpdateException;
import io.fedlora.Strategy;
import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import io.fedlora.product.FidelityReport;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.ParentCommand;
import picocli.CommandLine.Spec;

/**
 * {@code fedlora fidelity}: how far each strategy's global adapter would be from the exact
 * weighted average of the clients' updates and from the rank-aware average (DESIGN §9), per
 * module and overall, also after truncation to each client rank; from float64 Gram matrices of
 * the factors, never forming an {@code m x n} matrix. Writes nothing.
 */
@Command(name = "fidelity", mixinStandardHelpOptions = true,
        description = "Report how far each strategy's global adapter is from the exact weighted average "
                + "(and the rank-aware average) of the clients' updates, per module and overall.")
final class FidelityCommand implements Callable<Integer> {

    @ParentCommand
    Main main;

    @Spec
    CommandSpec spec;

    @Option(names = "--strategy", split = ",", paramLabel = "zero,replication,norm,svd,stack",
            converter = Options.StrategyConverter.class,
            description = "Strategies to report on (default all five). svd's figures hold for either of "
                    + "aggregate's --split values: both write the same scale * B A.")
    List<Strategy> strategies;

    @Option(names = "--weights", split = ",", paramLabel = "w1,w2,...",
            description = "Client weights (e.g. sample counts) in the order of the CLIENT arguments; default uniform.")
    double[] weights;

    @Option(names = "--rank", paramLabel = "R", defaultValue = "0",
            description = "Global rank; default the largest client rank of each module.")
    int rank;

    @Option(names = "--backend", paramLabel = "auto|cuda|vector|scalar", defaultValue = "auto",
            converter = Options.BackendConverter.class, description = "Compute backend (default auto).")
    String backend;

    @Option(names = "--scale", paramLabel = "none|fold", defaultValue = "none",
            converter = Options.ScaleConverter.class,
            description = "none: the updates are B A as stored; fold: each client's update is its lora_alpha/r "
                    + "(or rsLoRA's /sqrt(r)) times B A.")
    Options.Scale scale;

    @Option(names = "--allow-missing", description = "Report a module over the clients that have it, instead of failing.")
    boolean allowMissing;

    @Option(names = "--json", description = "Print the report as JSON.")
    boolean json;

    @Parameters(arity = "1..*", paramLabel = "CLIENT",
            description = "Client adapters: PEFT directories or .safetensors files.")
    List<Path> clients;

    @Override
    public Integer call() throws IOException {
        double[] w = AggregateCommand.checkedWeights(weights, clients.size(), spec);
        if (rank < 0) {
            throw new ParameterException(spec.commandLine(), "--rank must be at least 1 (or 0 for the largest client rank)");
        }
        List<Strategy> chosen = strategies == null || strategies.isEmpty()
                ? List.of(Strategy.ZERO, Strategy.REPLICATION, Strategy.NORM, Strategy.SVD, Strategy.STACK) : strategies;
        boolean fold = scale == Options.Scale.FOLD;
        Map<String, Path> fileOf = new HashMap<>();
        List<PeftAdapter> open = new ArrayList<>();
        try {
            List<ClientUpdate> updates = new ArrayList<>();
            for (int k = 0; k < clients.size(); k++) {
                Path path = clients.get(k);
                PeftAdapter adapter = PeftAdapter.open(path);
                open.add(adapter);
                if (fold && adapter.config() == null) {
                    throw new InvalidFileException(path.toString(), "--scale fold needs lora_alpha, but there is no "
                            + PeftAdapter.CONFIG + " for this adapter");
                }
                fileOf.put(path.toString(), path);
                updates.add(adapter.toUpdate(path.toString(), w[k]));
            }
            Aggregator.Builder builder = Aggregator.builder().strategy(Strategy.ZERO).globalRank(rank)
                    .allowMissing(allowMissing);
            if (!backend.equals("auto")) {
                builder.backend(backend);
            }
            if (fold) {
                builder.foldScale(open.get(0).config().scale());
            }
            FidelityReport report;
            try (Aggregator aggregator = builder.build()) {
                report = aggregator.fidelity(updates, chosen);
            }
            main.out.print(json ? report.toJson() : report.toText());
            return Main.OK;
        } catch (InvalidUpdateException e) {
            throw AggregateCommand.clientFailure(e, fileOf);
        } finally {
            open.forEach(PeftAdapter::close);
        }
    }
}
