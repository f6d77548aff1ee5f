"""What the federation tests share: the adapter, the clients' deterministic "training", the records
they leave, the checks on them, and process handling (free ports, own process groups, bounded waits)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")
KEYS = [f"{m}.lora_{f}.weight" for m in MODULES for f in "AB"]
IN_FEATURES, OUT_FEATURES = 32, 24
RANKS = (2, 4, 8)  # client i trains at rank RANKS[i]
ROUNDS = 3
NAN_CLIENT, NAN_ROUND = 1, 2  # client-1 sends NaN in round 2
INITIAL_RANK = 8


def client_name(i):
    return f"client-{i}"


def weight(i):
    return 100 * (i + 1)


def initial_global():
    rng = np.random.default_rng(0)
    out = {}
    for m in MODULES:
        out[f"{m}.lora_A.weight"] = (0.1 * rng.standard_normal((INITIAL_RANK, IN_FEATURES))).astype(np.float32)
        out[f"{m}.lora_B.weight"] = np.zeros((OUT_FEATURES, INITIAL_RANK), dtype=np.float32)
    return out


def train(received, i, server_round):
    """Client i's update: the leading RANKS[i] components of what it received, plus a step seeded by
    (client, round); NaN in one element for the NaN client in the NaN round."""
    r = RANKS[i]
    rng = np.random.default_rng(1000 * server_round + i)
    out = {}
    for key in KEYS:
        got = np.asarray(received[key], dtype=np.float32)
        if ".lora_A." in key:
            base = np.zeros((r, IN_FEATURES), np.float32)
            k = min(r, got.shape[0])
            base[:k] = got[:k]
        else:
            base = np.zeros((OUT_FEATURES, r), np.float32)
            k = min(r, got.shape[1])
            base[:, :k] = got[:, :k]
        out[key] = (base + 0.05 * rng.standard_normal(base.shape)).astype(np.float32)
    if i == NAN_CLIENT and server_round == NAN_ROUND:
        out[KEYS[1]][3, 1] = np.nan
    return out


def save(out_dir, name, tensors):
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in tensors.items()})
    os.replace(tmp, os.path.join(out_dir, name + ".npz"))


def load(out_dir, name):
    with np.load(os.path.join(out_dir, name + ".npz")) as z:
        return {k: z[k] for k in z.files}


def record_client(out_dir, i, server_round, received, sent):
    save(out_dir, f"client{i}_round{server_round}_received", received)
    save(out_dir, f"client{i}_round{server_round}_sent", sent)


def check_federation(test, out_dir, log_text, dropped, name=client_name, truncated_downloads=True,
                     log_round=NAN_ROUND):
    """The global after each round equals float64 replication of what the accepted clients sent; the
    NaN client is dropped by name in its round (one log line) and the round completes; from round 2 on
    each client receives the previous global truncated to the rank it last sent."""
    import reference
    previous = initial_global()
    for rnd in range(1, ROUNDS + 1):
        updates = []
        for i in range(len(RANKS)):
            received = load(out_dir, f"client{i}_round{rnd}_received")
            want_received = previous if rnd == 1 or not truncated_downloads else {
                k: (v[:RANKS[i]] if ".lora_A." in k else v[:, :RANKS[i]]) for k, v in previous.items()}
            for k in KEYS:
                np.testing.assert_array_equal(received[k], want_received[k],
                                              err_msg=f"round {rnd}: {name(i)} received {k}")
            sent = load(out_dir, f"client{i}_round{rnd}_sent")
            if not (i == NAN_CLIENT and rnd == NAN_ROUND):
                updates.append((name(i), weight(i), sent))
        global_r = load(out_dir, f"global_round{rnd}")
        reference.assert_close(test, {k: global_r[k] for k in KEYS}, reference.aggregate(updates, "replication", 0),
                               what=f"global after round {rnd}")
        previous = global_r
    test.assertEqual({int(k): v for k, v in dropped.items()},
                     {NAN_ROUND: [name(NAN_CLIENT)]}, "who was dropped in which round")
    lines = [l for l in log_text.splitlines() if "dropped client" in l]
    test.assertEqual(len(lines), 1, f"one drop log line expected, got {lines}")
    test.assertIn(f"dropped client {name(NAN_CLIENT)}:", lines[0])
    test.assertIn(f"round {log_round}:", lines[0])
    test.assertIn("NaN", lines[0])


def write_dropped(out_dir, dropped):
    with open(os.path.join(out_dir, "dropped.json"), "w") as f:
        json.dump({str(k): [name for name, _ in v] for k, v in dropped.items()}, f)


def read_dropped(out_dir):
    with open(os.path.join(out_dir, "dropped.json")) as f:
        return json.load(f)


# ---- processes ------------------------------------------------------------------------------------

PORT_RANGE = (19000, 19500)  # this helper's ports (PLAN.md)


def free_ports(count):
    """``count`` distinct ports of PORT_RANGE that are free on 127.0.0.1 right now."""
    rng = np.random.default_rng(os.getpid() ^ int(time.time() * 1000))
    ports = []
    for p in rng.permutation(np.arange(*PORT_RANGE)):
        p = int(p)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        ports.append(p)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free ports in {PORT_RANGE}")


def wait_for_port(port, seconds, procs=()):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} before port {port} opened")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {seconds} s")


class Processes:
    """Processes a test starts, each in its own process group, so that stop() ends exactly them and
    their children (Flower's SuperLink and SuperNodes spawn app processes)."""

    def __init__(self, log_dir, env):
        self.log_dir, self.env, self.procs = log_dir, env, []

    def start(self, name, argv, cwd=None):
        log = open(os.path.join(self.log_dir, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd,
                             start_new_session=True)
        p.name, p.log = name, log
        self.procs.append(p)
        return p

    def log_text(self, name):
        with open(os.path.join(self.log_dir, name + ".log"), errors="replace") as f:
            return f.read()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group's stragglers (app subprocesses) too
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.log.close()


def child_env(extra_path=()):
    """The environment for framework processes: these tests importable (fedlora as this process has it),
    the venv's tools first."""
    env = dict(os.environ)
    import fedlora
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fedlora.__file__)))
    paths = [HERE] + ([] if os.path.basename(package_root) == "site-packages" else [package_root])
    paths += list(extra_path) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class scratch:
    """A temporary directory for one federation; kept (and its path printed) when FEDLORA_TEST_KEEP=1."""

    def __init__(self, name):
        import tempfile
        self.path = tempfile.mkdtemp(prefix=f"fedlora-{name}-")

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        import shutil
        if os.environ.get("FEDLORA_TEST_KEEP") == "1":
            print(f"kept {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
