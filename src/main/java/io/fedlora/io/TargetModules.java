package io.fedlora.io;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * PEFT's {@code target_modules}: a list of names, each matching a module whose name is it or
 * ends in {@code "." + it}, or one string, a regular expression the whole module name must match
 * ({@code re.fullmatch}). An output must target every module it has weights for, or PEFT leaves
 * those layers out (issue 9: {@code --allow-missing} kept the first client's list).
 */
public final class TargetModules {
    private TargetModules() {
    }

    /**
     * The union of several clients' values, first client's entries first: lists are merged;
     * different regular expressions become one alternation; null values are skipped.
     */
    public static Object union(List<Object> values) {
        Set<String> names = new LinkedHashSet<>();
        Set<String> regexes = new LinkedHashSet<>();
        for (Object v : values) {
            if (v instanceof String regex) {
                regexes.add(regex);
            } else if (v instanceof Collection<?> list) {
                list.forEach(name -> names.add(String.valueOf(name)));
            }
        }
        if (regexes.isEmpty()) {
            return names.isEmpty() ? null : new ArrayList<>(names);
        }
        List<String> alternatives = new ArrayList<>();
        regexes.forEach(r -> alternatives.add("(?:" + r + ")"));
        names.forEach(n -> alternatives.add("(?:.*\\.)?" + escape(n)));
        return alternatives.size() == 1 ? regexes.iterator().next() : String.join("|", alternatives);
    }

    /**
     * {@code targets} (a list, a regex string or null) extended so that it matches every one of
     * {@code modules} (base-model names): a missing module's full name is appended to a list, or
     * added to a regex as an alternative. Null becomes the list of the modules' last name parts.
     */
    public static Object covering(Object targets, Collection<String> modules) {
        if (targets instanceof String regex) {
            StringBuilder out = new StringBuilder(regex);
            Pattern p = compile(regex);
            for (String module : modules) {
                if (p == null || !p.matcher(module).matches()) {
                    out.insert(0, "(?:").append(")|").append(escape(module));
                    p = compile(out.toString());
                }
            }
            return out.toString();
        }
        List<String> names = new ArrayList<>();
        if (targets instanceof Collection<?> list) {
            list.forEach(n -> names.add(String.valueOf(n)));
        }
        if (targets == null) {
            for (String module : modules) {
                String last = module.substring(module.lastIndexOf('.') + 1);
                if (!names.contains(last)) {
                    names.add(last);
                }
            }
            return names;
        }
        for (String module : modules) {
            if (!matchesList(names, module)) {
                names.add(module);
            }
        }
        return names;
    }

    /** PEFT's rule for a list entry: the module is the name or ends in "." + name. */
    public static boolean matchesList(List<String> names, String module) {
        for (String name : names) {
            if (module.equals(name) || module.endsWith("." + name)) {
                return true;
            }
        }
        return false;
    }

    /** Whether {@code targets} (list or regex) selects {@code module}, as PEFT decides it. */
    public static boolean matches(Object targets, String module) {
        if (targets instanceof String regex) {
            Pattern p = compile(regex);
            return p != null && p.matcher(module).matches();
        }
        List<String> names = new ArrayList<>();
        if (targets instanceof Collection<?> list) {
            list.forEach(n -> names.add(String.valueOf(n)));
        }
        return matchesList(names, module);
    }

    private static Pattern compile(String regex) {
        try {
            return Pattern.compile(regex);
        } catch (PatternSyntaxException e) {
            return null;
        }
    }

    /** A module name as a regex that Python's re reads the same way (no \Q..\E). */
    static String escape(String name) {
        StringBuilder out = new StringBuilder();
        for (char c : name.toCharArray()) {
            if (!Character.isLetterOrDigit(c) && c != '_') {
                out.append('\\');
            }
            out.append(c);
        }
        return out.toString();
    }
}
