package io.fedlora;

import io.fedlora.tensor.Tensor;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * One client's contribution to a round: an id for error messages, a weight (a sample count, or 1
 * for uniform averaging) and its adapter as PEFT names it, name to tensor. A module {@code X} is
 * the pair {@code X.lora_A.weight} ({@code [r, in]}) and {@code X.lora_B.weight} ({@code [out, r]});
 * other tensors are averaged with the client weights. The tensors are read in place, not copied.
 *
 * @param scale this client's LoRA scale, used only when the aggregator folds scales; may be null
 */
public record ClientUpdate(String clientId, double weight, Map<String, Tensor> tensors, LoraScale scale) {

    public ClientUpdate {
        Objects.requireNonNull(clientId, "clientId");
        Objects.requireNonNull(tensors, "tensors");
        tensors = Collections.unmodifiableMap(new LinkedHashMap<>(tensors));
    }

    public static ClientUpdate of(String clientId, double weight, Map<String, Tensor> tensors) {
        return new ClientUpdate(clientId, weight, tensors, null);
    }

    public ClientUpdate withScale(LoraScale scale) {
        return new ClientUpdate(clientId, weight, tensors, scale);
    }
}
