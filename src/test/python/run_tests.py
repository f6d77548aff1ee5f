"""Runs every Python test (test_*.py here) and fails when any fails or when none ran.

    python run_tests.py [-k PATTERN]... [--serial]      (bin/test-python runs this in the framework venv)

The federation tests spend most of their time waiting on the frameworks' own polling (Flower's
SuperNodes and Grid poll every 3 s), so each federation test class runs in a process of its own,
at the same time as the others and the bridge tests; --serial runs everything in this process.
After every process's output, one TAP line per test ("ok - ID" / "not ok - ID" with the failure
indented below it, "ok - ID # SKIP why") and a last summary line.
"""

import json
import os
import subprocess
import sys
import tempfile
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
    return list(flatten(suite))


def groups_of(tests):
    groups = {}
    for t in tests:
        module, cls = type(t).__module__, type(t).__qualname__
        key = f"{module}.{cls}" if module in FEDERATION_MODULES else "bridge"
        groups.setdefault(key, []).append(t.id())
    return groups


class RecordingResult(unittest.TextTestResult):
    """A text result that also keeps (id, outcome, detail) for the TAP lines."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes.append((test.id(), "ok", ""))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes.append((test.id(), "not ok", self.failures[-1][1]))

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes.append((test.id(), "not ok", self.errors[-1][1]))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes.append((test.id(), "skip", reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.outcomes.append((test.id(), "not ok", "expected failure: the test no longer tests anything"))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.outcomes.append((test.id(), "not ok", "unexpected success"))


def run_here(tests):
    runner = unittest.TextTestRunner(verbosity=2, resultclass=RecordingResult, stream=sys.stdout)
    result = runner.run(unittest.TestSuite(tests))
    return result.outcomes


def child(result_file, ids):
    sys.path.insert(0, HERE)
    tests = list(flatten(unittest.TestLoader().loadTestsFromNames(ids)))
    outcomes = run_here(tests)
    with open(result_file, "w") as f:
        json.dump(outcomes, f)
    return 0


def main(argv):
    if argv and argv[0] == "--child":
        return child(argv[1], argv[2:])
    patterns = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-k"]
    sys.path.insert(0, HERE)
    started = time.monotonic()
    tests = discover(patterns)
    outcomes = []
    # A module that does not import (a framework missing, say) fails here, with its ImportError.
    broken = [t for t in tests if type(t).__name__ == "_FailedTest"]
    tests = [t for t in tests if type(t).__name__ != "_FailedTest"]
    if broken:
        outcomes += run_here(broken)
    if "--serial" in argv:
        outcomes += run_here(tests)
    else:
        work = tempfile.mkdtemp(prefix="fedlora-pytests-")
        procs = {}
        for name, ids in groups_of(tests).items():
            log = open(os.path.join(work, name + ".log"), "w+")
            out = os.path.join(work, name + ".json")
            procs[name] = (subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", out, *ids],
                                            cwd=HERE, stdout=log, stderr=subprocess.STDOUT), log, out, ids)
        for name, (proc, log, out, ids) in procs.items():
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            print(f"==== {name} (exit {proc.returncode})\n{log.read()}", flush=True)
            log.close()
            if os.path.exists(out):
                with open(out) as f:
                    outcomes += [tuple(o) for o in json.load(f)]
            else:  # the process died (or hung and was killed): each of its tests failed
                outcomes += [(i, "not ok", f"its test process exited with {proc.returncode} before reporting")
                             for i in ids]
        for p in os.listdir(work):
            os.unlink(os.path.join(work, p))
        os.rmdir(work)
    passed = failed = skipped = 0
    for test_id, status, detail in outcomes:
        if status == "ok":
            passed += 1
            print(f"ok - {test_id}")
        elif status == "skip":
            skipped += 1
            print(f"ok - {test_id} # SKIP {detail}")
        else:
            failed += 1
            print(f"not ok - {test_id}")
            for line in detail.rstrip().splitlines()[-25:]:
                print(f"    {line}")
    print(f"python tests: {passed} passed, {failed} failed, {skipped} skipped in {time.monotonic() - started:.0f} s")
    if passed + failed == 0:
        print("fedlora: no Python tests ran", file=sys.stderr)
        return 1
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
