package io.fedlora.spark;

import java.io.Serializable;

/**
 * A client the job went on without: its id, where it was to be read from (a path, URI, or
 * manifest line) and why, on one line.
 */
public record BadClient(String clientId, String location, String reason) implements Serializable {

    @Override
    public String toString() {
        return clientId + " (" + location + "): " + reason;
    }
}
