package io.fedlora;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.fedlora.kernels.Backends;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Runs a main class of the test class path in a fresh JVM: for what is fixed once per process
 * (the library path, the module graph, the backend holder, the emulator's memory size).
 */
public final class ChildJvm {
    private ChildJvm() {
    }

    public record Result(int exit, String output) {
    }

    /**
     * @param jvmArgs options before the main class
     * @param environment changes to the environment (a null value removes the variable);
     *     FEDLORA_BACKEND is always removed
     */
    public static Result run(Class<?> main, List<String> jvmArgs, Map<String, String> environment, String... args)
            throws IOException, InterruptedException {
        return run(main, System.getProperty("java.class.path"), jvmArgs, environment, args);
    }

    /** As above, on {@code classPath} instead of this JVM's. */
    public static Result run(Class<?> main, String classPath, List<String> jvmArgs, Map<String, String> environment,
            String... args) throws IOException, InterruptedException {
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> command = new ArrayList<>(List.of(java, "-cp", classPath));
        command.addAll(jvmArgs);
        command.add(main.getName());
        command.addAll(List.of(args));
        ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true);
        builder.environment().remove(Backends.ENVIRONMENT);
        environment.forEach((name, value) -> {
            if (value == null) {
                builder.environment().remove(name);
            } else {
                builder.environment().put(name, value);
            }
        });
        Process process = builder.start();
        String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(process.waitFor(120, TimeUnit.SECONDS), "child timed out:\n" + output);
        return new Result(process.exitValue(), output);
    }
}
