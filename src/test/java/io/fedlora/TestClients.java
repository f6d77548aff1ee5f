package io.fedlora;

import io.fedlora.tensor.DType;
import io.fedlora.tensor.Tensor;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/** Seeded synthetic LoRA clients for tests. */
public final class TestClients {
    private TestClients() {
    }

    /** A module's name and its in/out features. */
    public record Shape(String module, int in, int out) {
    }

    /** Gaussian-ish values in [-1, 1), reproducible from the seed. */
    public static float[] values(SplittableRandom random, int count) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) (random.nextDouble() * 2 - 1);
        }
        return v;
    }

    /** One client of the given rank holding every module, in dtype. */
    public static ClientUpdate client(String id, double weight, int rank, List<Shape> shapes, DType dtype, long seed) {
        SplittableRandom random = new SplittableRandom(seed);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Shape s : shapes) {
            tensors.put(s.module() + ".lora_A.weight", Tensor.convert(values(random, rank * s.in()), dtype, rank, s.in()));
            tensors.put(s.module() + ".lora_B.weight", Tensor.convert(values(random, s.out() * rank), dtype, s.out(), rank));
        }
        return ClientUpdate.of(id, weight, tensors);
    }

    /** {@code ranks.length} clients with weights 1 + (k mod 7) and seeds from {@code seed}. */
    public static List<ClientUpdate> clients(int[] ranks, List<Shape> shapes, DType dtype, long seed) {
        List<ClientUpdate> out = new ArrayList<>();
        for (int k = 0; k < ranks.length; k++) {
            out.add(client("c" + k, 1 + (k % 7), ranks[k], shapes, dtype, seed * 1_000_003L + k));
        }
        return out;
    }
}
