"""The ServerApp of the Message API federation test: FedLoRA for 3 rounds, the global recorded after each."""

from flwr.app import Context
from flwr.common import Array, ArrayRecord
from flwr.serverapp import Grid, ServerApp

import fl_common
from fedlora.flower import FedLoRA

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    out_dir = context.run_config["out-dir"]
    strategy = FedLoRA(strategy="replication", fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)

    def record(server_round, arrays):
        if server_round > 0:
            fl_common.save(out_dir, f"global_round{server_round}", {k: v.numpy() for k, v in arrays.items()})
        return None

    initial = ArrayRecord({k: Array(v) for k, v in fl_common.initial_global().items()})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(context.run_config["num-server-rounds"]),
                   evaluate_fn=record, timeout=120)
    fl_common.write_dropped(out_dir, strategy.dropped)
