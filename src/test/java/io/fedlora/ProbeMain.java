package io.fedlora;

import io.fedlora.kernels.Backends;

/** Child-JVM entry for BackendSelectionTest: prints the chosen backend, or exits 3 with the error. */
public final class ProbeMain {
    private ProbeMain() {
    }

    public static void main(String[] args) {
        try {
            System.out.println("chosen=" + Backends.get().name());
        } catch (IllegalStateException e) {
            System.out.println(e.getMessage());
            System.exit(3);
        }
    }
}
