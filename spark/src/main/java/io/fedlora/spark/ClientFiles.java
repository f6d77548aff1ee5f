package io.fedlora.spark;

import io.fedlora.io.InvalidFileException;
import io.fedlora.io.PeftAdapter;
import java.io.IOException;
import java.net.URI;
import java.nio.file.Path;
import java.util.Locale;

/**
 * Opens the client behind a manifest location. Local paths and {@code file:} URIs are memory-mapped
 * (nothing is copied onto the heap); other URIs are read through Hadoop's file systems.
 */
final class ClientFiles {

    private ClientFiles() {
    }

    static PeftAdapter open(String location) throws IOException {
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
        throw new InvalidFileException(location, "scheme '" + uri.getScheme() + "' is not supported yet");
    }
}
