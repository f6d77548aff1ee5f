"""Builds the NVFlare test job (FedAvg controller with a FedLoRAAggregator, three numpy clients) and runs
it in the simulator.

    python nvflare_job.py WORKSPACE OUT_DIR
"""

import os
import sys

from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.job_config.api import FedJob
from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

import fl_common
from nvflare_recording import RecordingFedLoRAAggregator


def main(workspace, out_dir):
    job = FedJob(name="fedlora-nvflare-test")
    # fedlora and these test modules are installed on every site (PYTHONPATH): not copied into the job.
    job.set_app_packages(["fedlora", "fl_common", "nvflare_recording"])
    controller = FedAvg(num_clients=3, num_rounds=fl_common.ROUNDS, model={k: v.tolist() for k, v in fl_common.initial_global().items()},  # JSON in the job config
                        aggregator=RecordingFedLoRAAggregator(out_dir=out_dir), persistor_id="")
    job.to_server(controller)
    runner = ScriptRunner(script=os.path.join(fl_common.HERE, "nvflare_client.py"), script_args=f"--out-dir {out_dir}",
                          framework=FrameworkType.NUMPY)
    job.to_clients(runner)
    job.simulator_run(workspace, n_clients=3, threads=3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
