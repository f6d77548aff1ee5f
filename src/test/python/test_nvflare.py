"""A real NVIDIA FLARE simulator job whose FedAvg controller aggregates with FedLoRAAggregator."""

import os
import sys
import unittest

import fl_common
from test_flower import wait_for_file


class NvflareSimulator(unittest.TestCase):

    def test_three_sites_three_rounds_with_a_nan_site(self):
        with fl_common.scratch("nvflare") as tmp:
            out_dir = os.path.join(tmp, "records")
            workspace = os.path.join(tmp, "workspace")
            procs = fl_common.Processes(tmp, fl_common.child_env())
            try:
                job = procs.start("simulator", [sys.executable, os.path.join(fl_common.HERE, "nvflare_job.py"),
                                                workspace, out_dir])
                wait_for_file(os.path.join(out_dir, "done"), 240, [job])
                job.wait(60)
            finally:
                procs.stop()
            with open(os.path.join(workspace, "server", "log.txt"), errors="replace") as f:
                log_text = f.read()
            self.assertEqual(job.returncode, 0, procs.log_text("simulator")[-3000:])
            # FLARE counts rounds from 0 in its logs, and so does the aggregator's drop line.
            fl_common.check_federation(self, out_dir, log_text, fl_common.read_dropped(out_dir),
                                       name=lambda i: f"site-{i + 1}", truncated_downloads=False,
                                       log_round=fl_common.NAN_ROUND - 1)


class SplitOption(unittest.TestCase):
    """The SVD split reaches the Java policy, and is kept as an attribute for FedJob's serialisation."""

    def test_split_reaches_the_policy(self):
        from fedlora.nvflare import FedLoRAAggregator
        a = FedLoRAAggregator(strategy="svd", split="balanced")
        self.assertEqual(a.split, "balanced")
        a._ensure_round()
        self.assertEqual(str(a._aggregator._java.policy().split().name()), "BALANCED")
