"""The server of the legacy federation test: flwr.server.start_server with FedLoRALegacy.

    python legacy_server.py OUT_DIR PORT
"""

import sys

import flwr
from flwr.common import ndarrays_to_parameters

import fl_common
from fedlora.flower import FedLoRALegacy


def main(out_dir, port):
    def record(server_round, ndarrays, config):
        if server_round > 0:
            fl_common.save(out_dir, f"global_round{server_round}", dict(zip(fl_common.KEYS, ndarrays)))
        return None

    initial = fl_common.initial_global()
    strategy = FedLoRALegacy(
        fl_common.KEYS, strategy="replication", fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([initial[k] for k in fl_common.KEYS]),
        on_fit_config_fn=lambda r: {"server-round": r}, evaluate_fn=record)
    flwr.server.start_server(server_address=f"127.0.0.1:{port}", strategy=strategy,
                             config=flwr.server.ServerConfig(num_rounds=fl_common.ROUNDS, round_timeout=90))
    fl_common.write_dropped(out_dir, strategy.dropped)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
