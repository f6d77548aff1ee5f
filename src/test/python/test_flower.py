"""Real Flower federations on 127.0.0.1 through fedlora's strategies: the Message API (SuperLink,
three SuperNodes, flwr run) with FedLoRA, and the legacy start_server with FedLoRALegacy."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import fl_common

FLOWER_APP = os.path.join(fl_common.HERE, "flower_app")


def wait_for_file(path, seconds, procs):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        dead = [p for p in procs if p.poll() is not None and p.returncode != 0]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with {dead[0].returncode} before {path} appeared")
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear within {seconds} s")


class FlowerMessageApi(unittest.TestCase):

    def test_three_clients_three_rounds_with_a_nan_client(self):
        with fl_common.scratch("flwr") as tmp:
            out_dir = os.path.join(tmp, "records")
            home = os.path.join(tmp, "flwr-home")
            os.makedirs(home)
            appio, fleet, control, *clientappio = fl_common.free_ports(6)
            with open(os.path.join(home, "config.toml"), "w") as f:
                f.write(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                        f'address = "127.0.0.1:{control}"\ninsecure = true\n')
            env = fl_common.child_env()
            env["FLWR_HOME"] = home
            bindir = os.path.dirname(sys.executable)
            procs = fl_common.Processes(tmp, env)
            try:
                link = procs.start("superlink", [
                    os.path.join(bindir, "flower-superlink"), "--insecure",
                    "--serverappio-api-address", f"127.0.0.1:{appio}",
                    "--fleet-api-address", f"127.0.0.1:{fleet}",
                    "--control-api-address", f"127.0.0.1:{control}",
                    "--storage-dir", os.path.join(tmp, "storage")])
                fl_common.wait_for_port(fleet, 60, [link])
                fl_common.wait_for_port(control, 60, [link])
                nodes = [procs.start(f"supernode{i}", [
                    os.path.join(bindir, "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                    "--clientappio-api-address", f"127.0.0.1:{clientappio[i]}",
                    "--node-config", f"partition-id={i}", "--max-retries", "10"]) for i in range(3)]
                app = os.path.join(tmp, "fedlora-flower-app")
                shutil.copytree(FLOWER_APP, app)
                run = procs.start("flwr-run", [
                    os.path.join(bindir, "flwr"), "run", app, "local", "--stream",
                    "--run-config", f'out-dir="{out_dir}"'])
                wait_for_file(os.path.join(out_dir, "dropped.json"), 300, [link, run] + nodes)
                try:
                    run.wait(30)
                except subprocess.TimeoutExpired:
                    pass
                log_text = procs.log_text("superlink")
            finally:
                procs.stop()
            try:
                fl_common.check_federation(self, out_dir, log_text, fl_common.read_dropped(out_dir))
            except AssertionError:
                print(log_text[-4000:], file=sys.stderr)
                raise


class FlowerLegacy(unittest.TestCase):

    def test_three_clients_three_rounds_with_a_nan_client(self):
        with fl_common.scratch("flwr-legacy") as tmp:
            out_dir = os.path.join(tmp, "records")
            (port,) = fl_common.free_ports(1)
            procs = fl_common.Processes(tmp, fl_common.child_env())
            try:
                server = procs.start("server", [sys.executable, os.path.join(fl_common.HERE, "legacy_server.py"),
                                                out_dir, str(port)])
                fl_common.wait_for_port(port, 60, [server])
                clients = [procs.start(f"client{i}", [sys.executable, os.path.join(fl_common.HERE, "legacy_client.py"),
                                                      str(i), out_dir, str(port)]) for i in range(3)]
                wait_for_file(os.path.join(out_dir, "dropped.json"), 240, [server] + clients)
                server.wait(30)
                log_text = procs.log_text("server")
            finally:
                procs.stop()
            self.assertEqual(server.returncode, 0, log_text[-3000:])
            try:
                fl_common.check_federation(self, out_dir, log_text, fl_common.read_dropped(out_dir))
            except AssertionError:
                print(log_text[-4000:], file=sys.stderr)
                raise


class SplitOption(unittest.TestCase):
    """The SVD split reaches the Java policy through both Flower strategies."""

    def test_split_reaches_the_policy(self):
        from fedlora.flower import FedLoRA, FedLoRALegacy
        message = FedLoRA(strategy="svd", split="balanced")
        legacy = FedLoRALegacy(["m.lora_A.weight", "m.lora_B.weight"], strategy="svd", split="balanced")
        for s in (message, legacy):
            self.assertEqual(str(s.aggregator._java.policy().split().name()), "BALANCED")
        self.assertEqual(str(FedLoRA(strategy="svd").aggregator._java.policy().split().name()), "FLEXLORA")
        with self.assertRaises(ValueError):
            FedLoRA(strategy="zero", split="balanced")
