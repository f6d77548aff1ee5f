package io.fedlora.spark;

import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.MemorySegment;
import java.net.URI;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;

/**
 * Opens the clients behind manifest locations, for one task. Local paths and {@code file:} URIs are
 * memory-mapped (nothing is copied onto the heap). Any other URI ({@code hdfs:}, {@code s3a:},
 * {@code abfs:}, {@code gs:} ... whatever Hadoop file systems the cluster has) is read whole into
 * the heap through Hadoop, then parsed in place: such a client is a PEFT directory, and its
 * weights must fit one array (2 GB).
 */
final class ClientFiles {

    private final Map<String, String> hadoopSettings;
    private Configuration hadoop;

    /** {@code hadoopSettings}: Spark's {@code spark.hadoop.*} settings, without the prefix, for the Hadoop file systems. */
    ClientFiles(Map<String, String> hadoopSettings) {
        this.hadoopSettings = hadoopSettings;
    }

    PeftAdapter open(String location) throws IOException {
        if (!Manifest.isUri(location)) {
            return PeftAdapter.open(Path.of(location));
        }
        URI uri;
        try {
            uri = URI.create(location);
        } catch (IllegalArgumentException e) {
            throw new InvalidFileException(location, "not a valid URI: " + e.getMessage());
        }
        if ("file".equals(uri.getScheme().toLowerCase(Locale.ROOT))) {
            return PeftAdapter.open(Path.of(uri));
        }
        return openRemote(location);
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
