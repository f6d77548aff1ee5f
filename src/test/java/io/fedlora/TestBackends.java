package io.fedlora;

import java.util.Arrays;
import java.util.List;

/**
 * The backends the facade tests run on: {@code fedlora.test.backends} (comma-separated), by
 * default scalar and vector. The build adds cuda when the device emulator is on the library path;
 * a listed backend that cannot start fails the test, it is never skipped.
 */
public final class TestBackends {
    private TestBackends() {
    }

    public static List<String> names() {
        return Arrays.stream(System.getProperty("fedlora.test.backends", "scalar,vector").split(","))
                .map(String::trim).filter(s -> !s.isEmpty()).toList();
    }
}
