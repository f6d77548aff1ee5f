package io.fedlora;

import io.fedlora.product.FidelityReport;
import io.fedlora.product.Fill;
import io.fedlora.product.LowRank;
import io.fedlora.product.ModuleFactors;
import io.fedlora.product.ProductSpace;
import io.fedlora.product.Split;
import io.fedlora.tensor.DType;
import io.fedlora.tensor.Matrix;
import io.fedlora.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The facade's bridge to the product-space strategies (DESIGN §9, {@code io.fedlora.product}):
 * turns the screened clients of one module into {@link ModuleFactors} (the client weight
 * {@code p_k} and, when folding, the LoRA scale {@code s_k}) and writes SVD and STACK globals as
 * PEFT factors. Batch aggregation reads the clients' factors in place; a streaming {@link Round}
 * keeps float32 copies of them ({@link #copy}) and finishes through the very same
 * {@link #aggregate(String, String, String, List, Policy, ProductSpace, Map)}, so both give the
 * same bits. A round keeps factors, not Gram matrices: the output products need the stacks
 * themselves ({@code U = Bs X}), and a new client's cross blocks {@code B_k^T B_j} need the
 * earlier clients' factors.
 */
final class ProductModules {

    private ProductModules() {
    }

    /** The clients of {@code module} as product-space factors, in client order, read in place. */
    static List<ModuleFactors> factors(String module, List<ParsedUpdate> owners, Policy policy) {
        List<ModuleFactors> out = new ArrayList<>(owners.size());
        for (ParsedUpdate p : owners) {
            ParsedUpdate.Module m = p.modules.get(module);
            out.add(new ModuleFactors(p.client.clientId(), m.a(), m.b(), p.client.weight(),
                    Book.clientScale(policy, p, module, m.rank())));
        }
        return out;
    }

    /**
     * One client's module as factors the caller owns: float32 heap copies of A and B (exact for
     * every input dtype), its weight and, when folding, its LoRA scale. Reads the client's memory
     * (which may fault, on a mapped file that was truncated).
     */
    static ModuleFactors copy(ParsedUpdate p, ParsedUpdate.Module m, Policy policy) {
        double scale = Book.clientScale(policy, p, m.name(), m.rank());
        return new ModuleFactors(p.client.clientId(), Matrix.of(floats(m.a()), m.rank(), m.inFeatures()),
                Matrix.of(floats(m.b()), m.outFeatures(), m.rank()), p.client.weight(), scale);
    }

    private static final ValueLayout.OfFloat FLOAT_LE = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** A float32 heap copy of a dense view. */
    static float[] floats(Matrix x) {
        float[] out = new float[Math.toIntExact(x.size())];
        if (x.dtype() == DType.F32 && x.contiguous()) {
            MemorySegment.copy(x.data(), FLOAT_LE, x.offset() * 4, out, 0, out.length);
            return out;
        }
        int cols = x.cols();
        for (int i = 0; i < x.rows(); i++) {
            for (int j = 0; j < cols; j++) {
                out[i * cols + j] = x.get(i, j);
            }
        }
        return out;
    }

    /** The float[] behind a factor made by {@link #copy} (never written after the copy). */
    static float[] heap(Matrix x) {
        return (float[]) x.data().heapBase().orElseThrow();
    }

    /** Bytes of float32 factors one client's module takes: {@code (m + n) r * 4}. */
    static long bytes(ModuleFactors f) {
        return 4L * f.rank() * ((long) f.a().cols() + f.b().rows());
    }

    /** The global rank of a module: the policy's, else the largest client rank. */
    static int rank(Policy policy, List<ModuleFactors> clients) {
        if (policy.globalRank() > 0) {
            return policy.globalRank();
        }
        return clients.stream().mapToInt(ModuleFactors::rank).max().orElse(1);
    }

    /**
     * How the SVD is split into LoRA factors: the policy's split (FlexLoRA unless asked
     * otherwise). The one place the policy's split is read.
     */
    static Split split(Policy policy) {
        return policy.split();
    }

    /** {@link #aggregate(String, String, String, List, Policy, ProductSpace, Map)} of the batch's owners of {@code module}. */
    static void aggregate(String module, List<ParsedUpdate> owners, Policy policy, ProductSpace space,
            Map<String, Tensor> out) {
        ParsedUpdate.Module first = owners.get(0).modules.get(module);
        aggregate(module, first.keyA(), first.keyB(), factors(module, owners, policy), policy, space, out);
    }

    /**
     * SVD: the best rank-R approximation of the weighted average, split as the policy says, written
     * with the policy's global scale at rank R when folding (else 1). STACK: FLoRA's exact stack at
     * rank {@code S = sum r_k} (the global rank does not apply), A's rows times {@code w_k s_k / s_out},
     * {@code s_out} the global scale at rank S when folding (PEFT's {@code cat} is {@code lora_alpha = S}).
     * Batch and rounds both come here, with the clients in the same order.
     */
    static void aggregate(String module, String keyA, String keyB, List<ModuleFactors> clients, Policy policy,
            ProductSpace space, Map<String, Tensor> out) {
        ModuleFactors first = clients.get(0);
        int m = first.b().rows(), n = first.a().cols();
        if (policy.strategy() == Strategy.SVD) {
            int rank = rank(policy, clients);
            double outScale = policy.folds() ? policy.foldScale().of(module, rank) : 1;
            LowRank lr = space.svd(module, clients, rank, split(policy), outScale, Fill.ORTH);
            out.put(keyA, Tensor.of(lr.a(), rank, n));
            out.put(keyB, Tensor.of(lr.b(), m, rank));
        } else {
            int s = clients.stream().mapToInt(ModuleFactors::rank).sum();
            double outScale = policy.folds() ? policy.foldScale().of(module, s) : 1;
            ProductSpace.Stacked st = space.stack(module, clients, outScale);
            out.put(keyA, Tensor.of(st.a(), s, n));
            out.put(keyB, Tensor.of(st.b(), m, s));
        }
    }

    /** One module's input to the fidelity report. */
    static FidelityReport.ModuleInput input(String module, List<ParsedUpdate> owners, Policy policy) {
        return new FidelityReport.ModuleInput(module, factors(module, owners, policy), policy.globalRank());
    }
}
