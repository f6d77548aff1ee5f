package io.fedlora.spark;

import io.fedlora.io.OutputConfig;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.List;

/**
 * What a map task returns, and what two of them combine into: the partial aggregate of its good
 * clients as bytes (null when it has none), the clients it went on without, and counters for the
 * job's report. Everything the driver learns about the data comes back this way, as the task's
 * return value: a retried or speculative task's result replaces the lost one instead of adding
 * to it, which Spark accumulators would not guarantee.
 *
 * @param partial      a fedlora partial as safetensors bytes, or null
 * @param clients      good clients summed into {@code partial}
 * @param bytesRead    bytes of client files read
 * @param readNanos    time opening and checking client files, summed over tasks
 * @param addNanos     time adding clients to rounds, summed over tasks
 * @param closeNanos   time closing (unmapping) client files, summed over tasks
 * @param encodeNanos  time turning rounds into partial bytes, summed over tasks
 * @param mergeNanos   time decoding and merging partials in the tree reduction
 * @param taskNanos    map tasks' wall time, summed (the above, and building the task's aggregator)
 * @param longestTaskNanos the longest map task
 * @param tasks        map tasks whose results are in here
 * @param configs      what the output's config needs from the good clients
 */
public record TaskResult(byte[] partial, long clients, List<BadClient> bad, long bytesRead,
        long readNanos, long addNanos, long closeNanos, long encodeNanos, long mergeNanos, long taskNanos, long longestTaskNanos,
        int tasks, OutputConfig configs) implements Serializable {

    /** The two results' bad clients and counters, around an already merged partial. */
    static TaskResult combined(TaskResult x, TaskResult y, byte[] partial, long mergeNanos) {
        List<BadClient> bad = new ArrayList<>(x.bad);
        bad.addAll(y.bad);
        return new TaskResult(partial, x.clients + y.clients, bad, x.bytesRead + y.bytesRead,
                x.readNanos + y.readNanos, x.addNanos + y.addNanos, x.closeNanos + y.closeNanos, x.encodeNanos + y.encodeNanos,
                x.mergeNanos + y.mergeNanos + mergeNanos, x.taskNanos + y.taskNanos,
                Math.max(x.longestTaskNanos, y.longestTaskNanos), x.tasks + y.tasks, OutputConfig.merge(x.configs, y.configs));
    }
}
