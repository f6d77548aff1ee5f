package io.fedlora.io;

import java.io.IOException;

/**
 * A file fedlora cannot use: malformed safetensors, a bad adapter_config.json, a missing file.
 * The message is one line, "FILE: PROBLEM", ready for the command line to print as it is.
 */
public class InvalidFileException extends IOException {
    private final String file;
    private final String problem;

    public InvalidFileException(String file, String problem) {
        this(file, problem, null);
    }

    public InvalidFileException(String file, String problem, Throwable cause) {
        super(file + ": " + problem, cause);
        this.file = file;
        this.problem = problem;
    }

    /** The file as the user named it (or a description such as "<memory>"). */
    public String file() {
        return file;
    }

    /** What is wrong, without the file name. */
    public String problem() {
        return problem;
    }
}
