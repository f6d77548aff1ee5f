"""The ClientApp of the Message API federation test: client i trains at rank 2, 4 or 8."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

import fl_common

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    i = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    sent = fl_common.train(received, i, server_round)
    fl_common.record_client(context.run_config["out-dir"], i, server_round, received, sent)
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
        "metrics": MetricRecord({"num-examples": fl_common.weight(i)}),
        "client": ConfigRecord({"client-id": fl_common.client_name(i)}),
    })
    return Message(content=content, reply_to=msg)
