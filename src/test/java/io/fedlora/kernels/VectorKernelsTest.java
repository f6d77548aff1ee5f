package io.fedlora.kernels;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.ChildJvm;
import io.fedlora.kernels.cpu.VectorKernels;
import java.util.List;
import java.util.Map;
import jdk.incubator.vector.FloatVector;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The Vector API backend against the scalar reference (the whole contract), on three threads. The
 * build runs this class once per vector size, with {@code fedlora.vector.bits} = 128, 256 and 512
 * (surefire executions vector-128, -256, -512), so the short-row paths of 4, 8 and 16 lanes are
 * all held to the contract; a size wider than this machine's vectors is skipped, saying so.
 */
class VectorKernelsTest extends KernelsContractTest {
    private VectorKernels kernels;

    @BeforeAll
    void start() {
        String bits = System.getProperty(VectorKernels.BITS_PROPERTY, "");
        int widest = FloatVector.SPECIES_PREFERRED.vectorBitSize();
        Assumptions.assumeTrue(bits.isEmpty() || Integer.parseInt(bits) <= widest,
                VectorKernels.BITS_PROPERTY + "=" + bits + " is wider than this machine's " + widest + "-bit vectors");
        kernels = new VectorKernels(3);
    }

    @Override
    protected Kernels kernels() {
        return kernels;
    }

    @AfterAll
    void close() {
        if (kernels != null) {
            kernels.close();
        }
    }

    @Test
    void runsAtTheVectorSizeTheBuildAskedFor() {
        String bits = System.getProperty(VectorKernels.BITS_PROPERTY, "");
        String expected = (bits.isEmpty() ? FloatVector.SPECIES_PREFERRED.vectorBitSize() : bits) + "-bit";
        assertTrue(kernels.description().contains(expected), kernels.description() + " should say " + expected);
    }

    @Test
    void aVectorSizeThatIsNotOneOfTheThreeIsRefused() throws Exception {
        ChildJvm.Result r = ChildJvm.run(Child.class, List.of("--add-modules", "jdk.incubator.vector",
                "-D" + VectorKernels.BITS_PROPERTY + "=100"), Map.of());
        assertTrue(r.exit() == 0 && r.output().contains("refused: " + VectorKernels.BITS_PROPERTY + "=100"), r.output());
    }

    /** Runs in a child JVM (the size is read once per JVM). */
    public static final class Child {
        public static void main(String[] args) {
            try {
                new VectorKernels(1).close();
                System.out.println("accepted");
            } catch (UnsupportedOperationException e) {
                System.out.println("refused: " + e.getMessage());
            }
        }
    }
}
