package io.fedlora;

import io.fedlora.product.FidelityReport;
import io.fedlora.product.Fill;
import io.fedlora.product.LowRank;
import io.fedlora.product.ModuleFactors;
import io.fedlora.product.ProductSpace;
import io.fedlora.product.Split;
import io.fedlora.tensor.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The facade's bridge to the product-space strategies (DESIGN §9, {@code io.fedlora.product}):
 * turns the screened clients of one module into {@link ModuleFactors} (read in place, with the
 * client weight {@code p_k} and, when folding, the LoRA scale {@code s_k}) and writes SVD and
 * STACK globals as PEFT factors. Batch only: a streaming round would have to keep every client's
 * factors (the Gram route needs all cross blocks {@code B_k^T B_j}, and the output products need
 * the factors themselves), so {@link Round} refuses these strategies.
 */
final class ProductModules {

    private ProductModules() {
    }

    /** The clients of {@code module} as product-space factors, in client order. */
    static List<ModuleFactors> factors(String module, List<ParsedUpdate> owners, Policy policy) {
        List<ModuleFactors> out = new ArrayList<>(owners.size());
        for (ParsedUpdate p : owners) {
            ParsedUpdate.Module m = p.modules.get(module);
            out.add(new ModuleFactors(p.client.clientId(), m.a(), m.b(), p.client.weight(),
                    Book.clientScale(policy, p, module, m.rank())));
        }
        return out;
    }

    /** The global rank of a module: the policy's, else the largest client rank. */
    static int rank(Policy policy, List<ModuleFactors> clients) {
        if (policy.globalRank() > 0) {
            return policy.globalRank();
        }
        return clients.stream().mapToInt(ModuleFactors::rank).max().orElse(1);
    }

    /**
     * SVD: the best rank-R approximation of the weighted average, split by {@link Policy#split()}, written with the
     * policy's global scale at rank R when folding (else 1). STACK: FLoRA's exact stack at rank
     * {@code S = sum r_k} (the global rank does not apply), A's rows times {@code w_k s_k / s_out},
     * {@code s_out} the global scale at rank S when folding (PEFT's {@code cat} is {@code lora_alpha = S}).
     */
    static void aggregate(String module, List<ParsedUpdate> owners, Policy policy, ProductSpace space,
            Map<String, Tensor> out) {
        ParsedUpdate.Module first = owners.get(0).modules.get(module);
        List<ModuleFactors> clients = factors(module, owners, policy);
        int m = first.outFeatures(), n = first.inFeatures();
        if (policy.strategy() == Strategy.SVD) {
            int rank = rank(policy, clients);
            double outScale = policy.folds() ? policy.foldScale().of(module, rank) : 1;
            LowRank lr = space.svd(module, clients, rank, policy.split(), outScale, Fill.ORTH);
            out.put(first.keyA(), Tensor.of(lr.a(), rank, n));
            out.put(first.keyB(), Tensor.of(lr.b(), m, rank));
        } else {
            int s = clients.stream().mapToInt(ModuleFactors::rank).sum();
            double outScale = policy.folds() ? policy.foldScale().of(module, s) : 1;
            ProductSpace.Stacked st = space.stack(module, clients, outScale);
            out.put(first.keyA(), Tensor.of(st.a(), s, n));
            out.put(first.keyB(), Tensor.of(st.b(), m, s));
        }
    }

    /** One module's input to the fidelity report. */
    static FidelityReport.ModuleInput input(String module, List<ParsedUpdate> owners, Policy policy) {
        return new FidelityReport.ModuleInput(module, factors(module, owners, policy), policy.globalRank());
    }
}
