package io.fedlora;

/**
 * A client update that the round cannot take (DESIGN §6). The message is one line naming the
 * client, its file where there is one, the module or tensor, and the numbers that disagree. The
 * round that refused it is unchanged, bit for bit, and the caller may go on without the client.
 */
public class InvalidUpdateException extends IllegalArgumentException {
    private static final long serialVersionUID = 2L;

    private final String clientId;
    private final String module;
    private final String source;

    public InvalidUpdateException(String clientId, String module, String problem) {
        this(clientId, null, module, problem, null);
    }

    public InvalidUpdateException(String clientId, String source, String module, String problem, Throwable cause) {
        super("client '" + clientId + "'" + (source == null || source.equals(clientId) ? "" : " (" + source + ")")
                + (module == null ? "" : ", module '" + module + "'") + ": " + problem, cause);
        this.clientId = clientId;
        this.module = module;
        this.source = source;
    }

    /** The client whose update was refused. */
    public String clientId() {
        return clientId;
    }

    /** The module or tensor at fault, or null when the problem is the client as a whole (its weight, say). */
    public String module() {
        return module;
    }

    /** The file or directory the client was read from, or null. */
    public String source() {
        return source;
    }
}
