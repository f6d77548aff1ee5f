package io.fedlora.cli;

import io.fedlora.io.InvalidFileException;
import io.fedlora.io.OutputDir;
import io.fedlora.io.PeftAdapter;
import java.io.IOException;
import java.nio.charset.MalformedInputException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.ParameterException;

/**
 * The command line's inputs and output, checked before any file is read (issue 9: nothing the
 * user had is lost): client arguments expanded (list files, directories of clients), the output
 * kept apart from every input, no client twice.
 */
final class Inputs {
    private Inputs() {
    }

    /**
     * The clients the arguments name, in order. {@code @FILE} is a list file: one client path per
     * line (blank lines and lines starting with {@code #} skipped; relative paths are relative to
     * the list file's directory; a line is always a path, never another list). A directory that has
     * no {@code adapter_model.safetensors} but holds client adapters (PEFT directories or
     * {@code .safetensors} files) stands for its subdirectories and {@code .safetensors} files, in
     * name order. A client whose name starts
     * with {@code @} is written {@code ./@name}.
     */
    static List<Path> expand(List<String> arguments, CommandSpec spec) throws IOException {
        List<Path> clients = new ArrayList<>();
        for (String argument : arguments) {
            if (argument.startsWith("@")) {
                Path list = Path.of(argument.substring(1));
                if (!Files.isRegularFile(list)) {
                    throw new ParameterException(spec.commandLine(), argument + ": no such list file (@FILE lists "
                            + "clients, one per line; a client whose name starts with @ is written ./" + argument + ")");
                }
                clients.addAll(readList(list));
            } else {
                Path path = Path.of(argument);
                List<Path> inside = clientsIn(path);
                if (inside.isEmpty()) {
                    clients.add(path);
                } else {
                    clients.addAll(inside);
                }
            }
        }
        return clients;
    }

    private static List<Path> readList(Path list) throws IOException {
        List<String> lines;
        try {
            lines = Files.readAllLines(list, StandardCharsets.UTF_8);
        } catch (MalformedInputException e) {
            throw new InvalidFileException(list.toString(), "is not valid UTF-8 text (a list file holds one client path per line)");
        }
        Path base = list.getParent();
        List<Path> clients = new ArrayList<>();
        for (String line : lines) {
            String entry = line.strip();
            if (entry.isEmpty() || entry.startsWith("#")) {
                continue;
            }
            Path p = Path.of(entry);
            clients.add(p.isAbsolute() || base == null ? p : base.resolve(p));
        }
        if (clients.isEmpty()) {
            throw new InvalidFileException(list.toString(), "lists no clients");
        }
        return clients;
    }

    /**
     * The client adapters in a directory that is not itself an adapter but holds at least one
     * (a PEFT subdirectory or a .safetensors file); empty otherwise. Then every subdirectory is
     * taken as a client, so that a broken one is reported rather than left out; other files (a
     * list, a weights file) are skipped, and so are hidden entries.
     */
    private static List<Path> clientsIn(Path dir) throws IOException {
        if (!Files.isDirectory(dir) || Files.exists(dir.resolve(PeftAdapter.WEIGHTS), LinkOption.NOFOLLOW_LINKS)) {
            return List.of();
        }
        List<Path> entries;
        try (Stream<Path> list = Files.list(dir)) {
            entries = list.filter(p -> !p.getFileName().toString().startsWith(".")).sorted().toList();
        } catch (IOException e) {
            return List.of();
        }
        boolean holdsClients = entries.stream().anyMatch(p -> Files.isDirectory(p)
                ? Files.exists(p.resolve(PeftAdapter.WEIGHTS), LinkOption.NOFOLLOW_LINKS) : isSafetensors(p));
        if (!holdsClients) {
            return List.of();
        }
        return entries.stream().filter(p -> Files.isDirectory(p) || isSafetensors(p)).toList();
    }

    private static boolean isSafetensors(Path p) {
        return p.getFileName().toString().endsWith(".safetensors");
    }

    /**
     * Refuses (usage error) an output that is, contains or lies inside an input (real paths,
     * links resolved; the inputs are each client's path, weights file and config), a client
     * given twice (the same file, through any name: file keys), and an output that exists and
     * may not be replaced.
     */
    static void check(List<PeftAdapter.Location> inputs, Path output, boolean force, CommandSpec spec)
            throws IOException {
        Path out = realOrPlanned(output);
        Map<Object, Integer> seen = new HashMap<>();
        for (int k = 0; k < inputs.size(); k++) {
            PeftAdapter.Location in = inputs.get(k);
            for (Path p : new Path[] {in.client(), in.weights(), in.config()}) {
                if (p == null) {
                    continue;
                }
                Path real = p.toRealPath();
                String relation = out.equals(real) ? "is" : real.startsWith(out) ? "contains"
                        : out.startsWith(real) ? "lies inside" : null;
                if (relation != null) {
                    throw new ParameterException(spec.commandLine(), "-o " + output + " " + relation + " the input "
                            + p + (real.equals(p.toAbsolutePath()) ? "" : " (" + real + ")")
                            + "; write the output elsewhere");
                }
            }
            BasicFileAttributes attributes = Files.readAttributes(in.weights(), BasicFileAttributes.class);
            Object key = attributes.fileKey() != null ? attributes.fileKey() : in.weights().toRealPath();
            Integer first = seen.putIfAbsent(key, k);
            if (first != null) {
                throw new ParameterException(spec.commandLine(), "client " + (k + 1) + " (" + in.client()
                        + ") is the same file as client " + (first + 1) + " (" + inputs.get(first).client()
                        + "); give each client once");
            }
        }
        String refusal = OutputDir.refusal(output, force);
        if (refusal != null) {
            throw new ParameterException(spec.commandLine(), "-o " + output + ": " + refusal);
        }
    }

    /** The real path of {@code p}, or of its nearest existing ancestor with the rest appended. */
    static Path realOrPlanned(Path p) throws IOException {
        Path absolute = p.toAbsolutePath().normalize();
        Deque<Path> rest = new ArrayDeque<>();
        Path existing = absolute;
        while (existing != null && !Files.exists(existing)) {
            rest.push(existing.getFileName());
            existing = existing.getParent();
        }
        Path real = existing == null ? absolute.getRoot() : existing.toRealPath();
        while (!rest.isEmpty()) {
            real = real.resolve(rest.pop());
        }
        return real;
    }
}
