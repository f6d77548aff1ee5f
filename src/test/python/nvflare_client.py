"""An NVFlare client script for the simulator test: site-N trains at rank 2, 4 or 8 (N = 1, 2, 3)."""

import argparse

import numpy as np

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

import fl_common


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    flare.init()
    i = int(flare.get_site_name().split("-")[1]) - 1
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        server_round = model.current_round + 1  # FLARE counts rounds from 0
        received = {k: np.asarray(v, dtype=np.float32) for k, v in model.params.items()}
        sent = fl_common.train(received, i, server_round)
        fl_common.record_client(args.out_dir, i, server_round, received, sent)
        flare.send(FLModel(params=sent, params_type="FULL", meta={"NUM_STEPS_CURRENT_ROUND": fl_common.weight(i)}))


if __name__ == "__main__":
    main()
