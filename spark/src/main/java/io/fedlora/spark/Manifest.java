package io.fedlora.spark;

import java.io.IOException;
import java.io.Serializable;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The job's input: one client per line, {@code client_id, path_or_uri, weight}. Blank lines and
 * lines starting with {@code #} are skipped, and so is a first line that reads
 * {@code client_id,path_or_uri,weight}. A relative path is taken from the manifest's directory.
 * A line that cannot be used (too few fields, a weight that is not a finite number >= 0, a client
 * id seen before) does not stop the job: it is reported like any other bad client.
 *
 * @param clients the usable lines, in manifest order
 * @param bad     the lines that cannot be used, each naming its client (or line) and the reason
 */
public record Manifest(List<Entry> clients, List<BadClient> bad) {

    /**
     * One client to aggregate: what the map tasks receive.
     *
     * @param index    position among the usable lines; the first usable client gives the output its config
     * @param location an absolute local path, or a URI ({@code file:}, {@code hdfs:}, {@code s3a:} ... read through Hadoop)
     */
    public record Entry(int index, String clientId, String location, double weight) implements Serializable {
    }

    public static Manifest read(Path file) throws IOException {
        Path base = file.toAbsolutePath().getParent();
        return parse(Files.readAllLines(file, StandardCharsets.UTF_8), base, file.toString());
    }

    /** Parses manifest lines; {@code base} resolves relative paths, {@code source} names the manifest in messages. */
    public static Manifest parse(List<String> lines, Path base, String source) {
        List<Entry> clients = new ArrayList<>();
        List<BadClient> bad = new ArrayList<>();
        Map<String, Integer> lineOf = new HashMap<>();
        for (int n = 0; n < lines.size(); n++) {
            String line = lines.get(n).strip();
            int lineNumber = n + 1;
            if (line.isEmpty() || line.startsWith("#")
                    || (clients.isEmpty() && bad.isEmpty() && line.replace(" ", "").equalsIgnoreCase("client_id,path_or_uri,weight"))) {
                continue;
            }
            String[] fields = line.split(",", -1);
            String where = source + ":" + lineNumber;
            if (fields.length != 3) {
                bad.add(new BadClient(fields[0].strip().isEmpty() ? where : fields[0].strip(), where,
                        "expected 3 fields (client_id, path_or_uri, weight), found " + fields.length));
                continue;
            }
            String id = fields[0].strip(), location = fields[1].strip(), weightText = fields[2].strip();
            if (id.isEmpty() || location.isEmpty()) {
                bad.add(new BadClient(id.isEmpty() ? where : id, where, "empty client id or location"));
                continue;
            }
            double weight;
            try {
                weight = Double.parseDouble(weightText);
            } catch (NumberFormatException e) {
                weight = Double.NaN;
            }
            if (!(weight >= 0) || Double.isInfinite(weight)) {
                bad.add(new BadClient(id, where, "weight '" + weightText + "' is not a finite number >= 0"));
                continue;
            }
            Integer earlier = lineOf.putIfAbsent(id, lineNumber);
            if (earlier != null) {
                bad.add(new BadClient(id, where, "client id already used on line " + earlier));
                continue;
            }
            clients.add(new Entry(clients.size(), id, resolve(location, base), weight));
        }
        return new Manifest(List.copyOf(clients), List.copyOf(bad));
    }

    /** A URI with a scheme (two letters or more, so that {@code C:\...} stays a path) as it is; a path made absolute. */
    static String resolve(String location, Path base) {
        if (isUri(location)) {
            return location;
        }
        Path path = Path.of(location);
        return (path.isAbsolute() || base == null ? path : base.resolve(path)).normalize().toString();
    }

    static boolean isUri(String location) {
        int colon = location.indexOf(':');
        if (colon < 2) {
            return false;
        }
        try {
            URI uri = new URI(location);
            return uri.getScheme() != null && uri.getScheme().length() == colon
                    && uri.getScheme().toLowerCase(Locale.ROOT).matches("[a-z][a-z0-9+.-]+");
        } catch (URISyntaxException e) {
            return false;
        }
    }
}
