package io.fedlora;

/**
 * A client update that no strategy can use (DESIGN §6). The message is one line naming the client,
 * the module or tensor, and the numbers that disagree. The round that refused it is unchanged.
 */
public class InvalidUpdateException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    private final String clientId;
    private final String module;

    public InvalidUpdateException(String clientId, String module, String problem) {
        super("client '" + clientId + "'" + (module == null ? "" : ", module '" + module + "'") + ": " + problem);
        this.clientId = clientId;
        this.module = module;
    }

    /** The client whose update was refused. */
    public String clientId() {
        return clientId;
    }

    /** The module or tensor at fault, or null when the problem is the client as a whole (its weight, say). */
    public String module() {
        return module;
    }
}
