package io.fedlora.spark;

import java.net.URI;
import org.apache.hadoop.fs.RawLocalFileSystem;

/**
 * The local disk under a scheme of its own ({@code fedloratest:///abs/path}), so that the tests
 * take the job's Hadoop path (what {@code hdfs:} or {@code s3a:} clients take) without a cluster.
 * Registered with {@code spark.hadoop.fs.fedloratest.impl}.
 */
public final class LocalTestFileSystem extends RawLocalFileSystem {

    static final String SCHEME = "fedloratest";

    @Override
    public URI getUri() {
        return URI.create(SCHEME + ":///");
    }

    @Override
    public String getScheme() {
        return SCHEME;
    }
}
