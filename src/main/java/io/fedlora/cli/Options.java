package io.fedlora.cli;

import io.fedlora.tensor.DType;
import io.fedlora.Strategy;
import io.fedlora.product.Split;
import java.util.Locale;
import java.util.Set;
import picocli.CommandLine.ITypeConverter;
import picocli.CommandLine.TypeConversionException;

/** Converters for the option values of DESIGN §5; a bad value is a usage error (exit 2). */
final class Options {
    private Options() {
    }

    static final class StrategyConverter implements ITypeConverter<Strategy> {
        @Override
        public Strategy convert(String value) {
            try {
                return Strategy.parse(value);
            } catch (IllegalArgumentException e) {
                throw new TypeConversionException("'" + value + "' is not one of zero, replication, norm, svd, stack");
            }
        }
    }

    static final class BackendConverter implements ITypeConverter<String> {
        private static final Set<String> NAMES = Set.of("auto", "cuda", "vector", "scalar");

        @Override
        public String convert(String value) {
            String name = value.toLowerCase(Locale.ROOT);
            if (!NAMES.contains(name)) {
                throw new TypeConversionException("'" + value + "' is not one of auto, cuda, vector, scalar");
            }
            return name;
        }
    }

    static final class DTypeConverter implements ITypeConverter<DType> {
        @Override
        public DType convert(String value) {
            return switch (value.toLowerCase(Locale.ROOT)) {
                case "f32", "float32" -> DType.F32;
                case "bf16", "bfloat16" -> DType.BF16;
                case "f16", "float16" -> DType.F16;
                default -> throw new TypeConversionException("'" + value + "' is not one of f32, bf16, f16");
            };
        }
    }

    /** What --scale asks for (DESIGN §2, LoRA scaling). */
    enum Scale {
        /** Average the factors as they are. */
        NONE,
        /** Fold each client's lora_alpha / r into B, write the global scale. */
        FOLD
    }

    static final class ScaleConverter implements ITypeConverter<Scale> {
        @Override
        public Scale convert(String value) {
            return switch (value.toLowerCase(Locale.ROOT)) {
                case "none" -> Scale.NONE;
                case "fold" -> Scale.FOLD;
                default -> throw new TypeConversionException("'" + value + "' is not one of none, fold");
            };
        }
    }

    /** {@code --split flexlora|balanced}: how SVD splits its factorisation (DESIGN §9). */
    static final class SplitConverter implements ITypeConverter<Split> {
        @Override
        public Split convert(String value) {
            return switch (value.toLowerCase(Locale.ROOT)) {
                case "flexlora" -> Split.FLEXLORA;
                case "balanced" -> Split.BALANCED;
                default -> throw new TypeConversionException("'" + value + "' is not one of flexlora, balanced");
            };
        }
    }
}
