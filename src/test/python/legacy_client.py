"""A client of the legacy federation test: flwr.client.start_client with a NumPyClient of rank 2, 4 or 8.

    python legacy_client.py INDEX OUT_DIR PORT
"""

import sys

import flwr

import fl_common


class LoraClient(flwr.client.NumPyClient):
    def __init__(self, i, out_dir):
        self.i, self.out_dir = i, out_dir

    def get_parameters(self, config):
        return [fl_common.initial_global()[k] for k in fl_common.KEYS]

    def fit(self, parameters, config):
        server_round = int(config["server-round"])
        received = dict(zip(fl_common.KEYS, parameters))
        sent = fl_common.train(received, self.i, server_round)
        fl_common.record_client(self.out_dir, self.i, server_round, received, sent)
        return [sent[k] for k in fl_common.KEYS], fl_common.weight(self.i), {"client-id": fl_common.client_name(self.i)}


if __name__ == "__main__":
    i, out_dir, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    flwr.client.start_client(server_address=f"127.0.0.1:{port}", client=LoraClient(i, out_dir).to_client(),
                             insecure=True, max_retries=30, max_wait_time=60)
