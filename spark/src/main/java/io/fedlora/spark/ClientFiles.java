package io.fedlora.spark;

import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.MemorySegment;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;

/**
 * Opens the clients behind manifest locations, for one task. Local paths and {@code file:} URIs are
 * memory-mapped (or read into the heap, {@link #openLocal}). Any other URI ({@code hdfs:}, {@code s3a:},
 * {@code abfs:}, {@code gs:} ... whatever Hadoop file systems the cluster has) is read whole into
 * the heap through Hadoop, then parsed in place: such a client is a PEFT directory, and its
 * weights must fit one array (2 GB).
 */
final class ClientFiles {

    private final Map<String, String> hadoopSettings;
    private final boolean heapLocal;
    private Configuration hadoop;

    /**
     * @param hadoopSettings Spark's {@code spark.hadoop.*} settings, without the prefix, for the Hadoop file systems
     * @param heapLocal      read local clients into the heap instead of mapping them (see {@link #openLocal})
     */
    ClientFiles(Map<String, String> hadoopSettings, boolean heapLocal) {
        this.hadoopSettings = hadoopSettings;
        this.heapLocal = heapLocal;
    }

    PeftAdapter open(String location) throws IOException {
        if (!Manifest.isUri(location)) {
            return heapLocal ? openLocal(Path.of(location), location) : PeftAdapter.open(Path.of(location));
        }
        URI uri;
        try {
            uri = URI.create(location);
        } catch (IllegalArgumentException e) {
            throw new InvalidFileException(location, "not a valid URI: " + e.getMessage());
        }
        if ("file".equals(uri.getScheme().toLowerCase(Locale.ROOT))) {
            return heapLocal ? openLocal(Path.of(uri), location) : PeftAdapter.open(Path.of(uri));
        }
        return openRemote(location);
    }

    /**
     * A local PEFT directory read into the heap rather than mapped ({@code --local-read heap}): a
     * task holds one client at a time, and unmapping a file closes a shared arena, a handshake with
     * every thread of the JVM, which an executor has many of (see spark/README.md for what it
     * cost). Anything else (a bare file, a client over 2 GB, a missing weights file, whose message
     * {@link PeftAdapter#open} words) is mapped.
     */
    private static PeftAdapter openLocal(Path client, String location) throws IOException {
        Path weights = client.resolve(PeftAdapter.WEIGHTS);
        if (!Files.isDirectory(client) || !Files.isRegularFile(weights) || Files.size(weights) > Integer.MAX_VALUE - 8) {
            return PeftAdapter.open(client);
        }
        Path config = client.resolve(PeftAdapter.CONFIG);
        byte[] configBytes = Files.isRegularFile(config) ? Files.readAllBytes(config) : null;
        return PeftAdapter.read(MemorySegment.ofArray(Files.readAllBytes(weights)), configBytes, location);
    }

    /** A PEFT directory read through Hadoop. */
    private PeftAdapter openRemote(String location) throws IOException {
        org.apache.hadoop.fs.Path path = new org.apache.hadoop.fs.Path(location);
        FileSystem fs = path.getFileSystem(hadoop());
        FileStatus status;
        try {
            status = fs.getFileStatus(path);
        } catch (FileNotFoundException e) {
            throw new InvalidFileException(location, "no such file or directory", e);
        }
        if (!status.isDirectory()) {
            throw new InvalidFileException(location, "is a file; a client read through Hadoop must be a PEFT directory ("
                    + PeftAdapter.WEIGHTS + " and " + PeftAdapter.CONFIG + ")");
        }
        org.apache.hadoop.fs.Path weights = new org.apache.hadoop.fs.Path(path, PeftAdapter.WEIGHTS);
        org.apache.hadoop.fs.Path config = new org.apache.hadoop.fs.Path(path, PeftAdapter.CONFIG);
        if (!fs.exists(weights)) {
            throw new InvalidFileException(location, "no " + PeftAdapter.WEIGHTS + " in this directory");
        }
        byte[] configBytes = fs.exists(config) ? readFully(fs, config) : null;
        return PeftAdapter.read(MemorySegment.ofArray(readFully(fs, weights)), configBytes, location);
    }

    private static byte[] readFully(FileSystem fs, org.apache.hadoop.fs.Path file) throws IOException {
        long length = fs.getFileStatus(file).getLen();
        if (length > Integer.MAX_VALUE - 8) {
            throw new InvalidFileException(file.toString(), length + " bytes do not fit one array; copy the client to local disk");
        }
        byte[] bytes = new byte[(int) length];
        try (FSDataInputStream in = fs.open(file)) {
            in.readFully(bytes);
            if (readsMore(in)) {
                throw new InvalidFileException(file.toString(), "grew while it was read");
            }
        }
        return bytes;
    }

    private static boolean readsMore(InputStream in) throws IOException {
        return in.read() >= 0;
    }

    private Configuration hadoop() {
        if (hadoop == null) {
            hadoop = new Configuration();
            hadoopSettings.forEach(hadoop::set);
        }
        return hadoop;
    }
}
