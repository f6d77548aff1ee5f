package io.fedlora;

import io.fedlora.tensor.Tensor;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * One client's contribution to a round: an id for error messages, a weight (a sample count, or 1
 * for uniform averaging; finite and {@code >= 0}) and its adapter as PEFT names it, name to tensor
 * (see {@link PeftKeys}); tensors that are not LoRA factors are averaged with the client weights.
 * The tensors are read in place, not copied, and not referenced after the call that reads them.
 *
 * @param scale this client's LoRA scale, needed only when the policy folds scales; may be null
 * @param source where the update came from (a file or directory), named in error messages; may be null
 */
public record ClientUpdate(String clientId, double weight, Map<String, Tensor> tensors, LoraScale scale, String source) {

    public ClientUpdate {
        Objects.requireNonNull(clientId, "clientId");
        Objects.requireNonNull(tensors, "tensors");
        tensors = Collections.unmodifiableMap(new LinkedHashMap<>(tensors));
    }

    public static ClientUpdate of(String clientId, double weight, Map<String, Tensor> tensors) {
        return new ClientUpdate(clientId, weight, tensors, null, null);
    }

    public ClientUpdate withScale(LoraScale scale) {
        return new ClientUpdate(clientId, weight, tensors, scale, source);
    }

    public ClientUpdate withSource(String source) {
        return new ClientUpdate(clientId, weight, tensors, scale, source);
    }
}
