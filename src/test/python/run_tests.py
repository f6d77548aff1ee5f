"""Runs every Python test (test_*.py here) and fails when any fails or when none ran.

    python run_tests.py [-k PATTERN]... [--serial]      (bin/test-python runs this in the framework venv)

The federation tests spend most of their time waiting on the frameworks' own polling (Flower's
SuperNodes and Grid poll every 3 s), so each federation test class runs in a process of its own,
at the same time as the others and the bridge tests; --serial runs everything in this process.
"""

import os
import re
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FEDERATION_MODULES = ("test_flower", "test_nvflare")


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def discover(patterns):
    loader = unittest.TestLoader()
    if patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in patterns]
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(flatten(suite))
    broken = [t for t in tests if type(t).__name__ == "_FailedTest"]  # an import error: a failure, never a skip
    return tests, broken


def groups_of(tests):
    groups = {}
    for t in tests:
        module, cls = type(t).__module__, type(t).__qualname__
        key = f"{module}.{cls}" if module in FEDERATION_MODULES else "bridge"
        groups.setdefault(key, []).append(t.id())
    return groups


def main(argv):
    patterns = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-k"]
    sys.path.insert(0, HERE)
    tests, broken = discover(patterns)
    if "--serial" in argv or broken:
        suite = unittest.TestSuite(tests)
        result = unittest.TextTestRunner(verbosity=2).run(suite)
        ran, ok = result.testsRun, result.wasSuccessful()
    else:
        started = time.monotonic()
        procs = {}
        for name, ids in groups_of(tests).items():
            log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fedlora-pytest-{os.getpid()}-{name}.log"), "w+")
            procs[name] = (subprocess.Popen([sys.executable, "-m", "unittest", "-v", *ids], cwd=HERE,
                                            stdout=log, stderr=subprocess.STDOUT), log)
        ran, ok = 0, True
        for name, (proc, log) in procs.items():
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"fedlora: the {name} tests did not finish within 600 s", file=sys.stderr)
            log.seek(0)
            text = log.read()
            log.close()
            os.unlink(log.name)
            print(f"==== {name} (exit {proc.returncode})\n{text}", flush=True)
            m = re.search(r"^Ran (\d+) tests?", text, re.M)
            ran += int(m.group(1)) if m else 0
            ok &= proc.returncode == 0
        print(f"==== {ran} tests in {len(procs)} processes, {time.monotonic() - started:.0f} s: "
              f"{'OK' if ok else 'FAILED'}")
    if ran == 0:
        print("fedlora: no Python tests ran", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
