"""Starts the JDK 25 JVM once per process through JPype, with fedlora's jar on the class path.

The JDK is found the way ``bin/java25`` finds it: ``FEDLORA_JAVA_HOME``, ``JAVA_HOME``, then the
JDKs under ``/usr/lib/jvm`` and ``/opt``. The class path is ``FEDLORA_CLASSPATH`` when set, else the
jars installed inside this package (``fedlora/_jars``), else a checkout's ``target/fedlora.jar`` and
``target/lib/*``; JPype's own support jar is added where Debian puts it.
"""

import glob
import os
import re
import threading

_lock = threading.Lock()
_classes = None

# Debian's python3-jpype keeps org.jpype.jar here, not beside the module (DESIGN §8).
_JPYPE_JARS = ("/usr/share/java/org.jpype.jar",)


class FedloraUnavailable(RuntimeError):
    """fedlora cannot start here: no JPype, no JDK 25, or no fedlora jar. The message says what to install."""


def _feature_version(home):
    release = os.path.join(home, "release")
    if os.path.isfile(release):
        with open(release, encoding="utf-8", errors="replace") as f:
            m = re.search(r'^JAVA_VERSION="(\d+)', f.read(), re.M)
        return int(m.group(1)) if m else None
    return None


def find_java_home():
    """The home of a JDK 25 or newer, or FedloraUnavailable naming where it looked."""
    candidates = [os.environ.get("FEDLORA_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    candidates += sorted(glob.glob("/usr/lib/jvm/*25*")) + sorted(glob.glob("/usr/lib/jvm/*"))
    candidates += sorted(glob.glob("/opt/*jdk*")) + sorted(glob.glob("/opt/java/*"))
    for home in candidates:
        if not home or not os.path.isfile(os.path.join(home, "lib", "server", "libjvm.so")):
            continue
        v = _feature_version(home)
        if v is not None and v >= 25:
            return home
    raise FedloraUnavailable(
        "fedlora: no JDK 25 found (looked at FEDLORA_JAVA_HOME, JAVA_HOME, /usr/lib/jvm, /opt); "
        "install one (e.g. Temurin 25) or set FEDLORA_JAVA_HOME to its home")


def _checkout_root():
    here = os.path.dirname(os.path.abspath(__file__))
    # src/main/python/fedlora -> the repository root, when run from a checkout.
    root = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
    return root if os.path.isfile(os.path.join(root, "pom.xml")) else None


def class_path():
    """The jars the JVM gets: fedlora's, its runtime dependencies and JPype's support jar."""
    env = os.environ.get("FEDLORA_CLASSPATH")
    if env:
        jars = [p for p in env.split(os.pathsep) if p]
    else:
        bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_jars")
        root = _checkout_root()
        if os.path.isfile(os.path.join(bundled, "fedlora.jar")):
            jars = [os.path.join(bundled, "fedlora.jar")] + sorted(
                p for p in glob.glob(os.path.join(bundled, "*.jar")) if not p.endswith("/fedlora.jar"))
        elif root and os.path.isfile(os.path.join(root, "target", "fedlora.jar")):
            jars = [os.path.join(root, "target", "fedlora.jar")] + sorted(
                glob.glob(os.path.join(root, "target", "lib", "*.jar")))
        else:
            raise FedloraUnavailable(
                "fedlora: the fedlora jar is missing: install the package with bin/install-python "
                "(it builds and bundles the jar), or build it with 'mvn package' in the checkout, "
                "or set FEDLORA_CLASSPATH")
    jars += [j for j in _JPYPE_JARS if os.path.isfile(j)]
    return jars


def classes():
    """The Java classes the bridge uses, starting the JVM on first call (thread-safe)."""
    global _classes
    if _classes is not None:
        return _classes
    with _lock:
        if _classes is None:
            _classes = _start()
    return _classes


class _Classes:
    def __init__(self, jpype):
        j = jpype.JClass
        self.jpype = jpype
        self.Aggregator = j("io.fedlora.Aggregator")
        self.ClientUpdate = j("io.fedlora.ClientUpdate")
        self.Strategy = j("io.fedlora.Strategy")
        self.Split = j("io.fedlora.product.Split")
        self.LoraScale = j("io.fedlora.LoraScale")
        self.InvalidUpdateException = j("io.fedlora.InvalidUpdateException")
        self.Partial = j("io.fedlora.Partial")
        self.Tensor = j("io.fedlora.tensor.Tensor")
        self.DType = j("io.fedlora.tensor.DType")
        self.Arena = j("java.lang.foreign.Arena")
        self.LinkedHashMap = j("java.util.LinkedHashMap")
        self.ArrayList = j("java.util.ArrayList")
        self.IllegalArgumentException = j("java.lang.IllegalArgumentException")
        self.IllegalStateException = j("java.lang.IllegalStateException")
        self.JLongArray = jpype.JArray(jpype.JLong)


def _start():
    try:
        import jpype
    except ImportError as e:
        raise FedloraUnavailable(
            "fedlora: JPype is not installed; install it (Debian: apt install python3-jpype; "
            "elsewhere: pip install JPype1)") from e
    if not jpype.isJVMStarted():
        home = find_java_home()
        jvm = os.path.join(home, "lib", "server", "libjvm.so")
        options = ["--add-modules=jdk.incubator.vector", "--enable-native-access=ALL-UNNAMED"]
        options += [o for o in os.environ.get("FEDLORA_JAVA_OPTS", "").split() if o]
        jpype.startJVM(jvm, *options, classpath=class_path(), convertStrings=False)
    try:
        return _Classes(jpype)
    except TypeError as e:  # JPype's "Class ... is not found"
        raise FedloraUnavailable(
            "fedlora: the JVM is running but fedlora's classes are not on its class path "
            f"(started elsewhere without the jar?): {e}") from e
