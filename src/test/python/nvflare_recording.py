"""FedLoRAAggregator for the NVFlare test: records the global after each round and who was dropped."""

import os

import fl_common
from fedlora.nvflare import FedLoRAAggregator


class RecordingFedLoRAAggregator(FedLoRAAggregator):
    def __init__(self, out_dir="", strategy="replication"):
        super().__init__(strategy=strategy)
        self.out_dir = out_dir
        self.rounds_done = 0

    def aggregate_model(self):
        model = super().aggregate_model()
        self.rounds_done += 1
        fl_common.save(self.out_dir, f"global_round{self.rounds_done}", model.params)
        fl_common.write_dropped(self.out_dir, {r + 1: v for r, v in self.dropped.items()})
        if self.rounds_done == fl_common.ROUNDS:
            open(os.path.join(self.out_dir, "done"), "w").close()
        return model
