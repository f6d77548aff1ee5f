/**
 * fedlora: server-side aggregation of rank-heterogeneous federated LoRA adapters.
 *
 * <p>Exported: the facade ({@code io.fedlora}: Aggregator, Round, Partial, Policy, ClientUpdate),
 * the data model ({@code io.fedlora.tensor}), PEFT and safetensors files ({@code io.fedlora.io})
 * the kernels SPI with the backend lookup ({@code io.fedlora.kernels}) and product-space aggregation
 * ({@code io.fedlora.product}: SVD, STACK, the fidelity report). The backends
 * themselves ({@code kernels.cpu}, {@code kernels.cuda}) and the command line stay inside; the
 * Vector API, JCuda and picocli are optional ({@code requires static}), loaded only when present.
 */
module io.fedlora {
    requires org.slf4j;
    requires com.fasterxml.jackson.core;
    // Product space (issue 11): EJML for the small float64 S x S problems.
    requires ejml.ddense;
    requires ejml.core;
    requires static jdk.incubator.vector;
    requires static jcuda;
    requires static jcublas;
    requires static info.picocli;

    exports io.fedlora;
    exports io.fedlora.tensor;
    exports io.fedlora.io;
    exports io.fedlora.kernels;
    exports io.fedlora.product;

    opens io.fedlora.cli to info.picocli;

    uses org.slf4j.spi.SLF4JServiceProvider;
}
