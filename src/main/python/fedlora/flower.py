"""Flower strategies that aggregate LoRA adapters of different ranks with fedlora.

``FedLoRA`` is a ``flwr.serverapp.strategy.FedAvg`` (Message API: SuperLink, SuperNodes, ``flwr
run``); ``FedLoRALegacy`` a ``flwr.server.strategy.FedAvg`` (``start_server``). Both stream each
reply into one fedlora round, drop a client fedlora refuses with one log line naming it and why
(as Flower treats a failed client) and finish the round with the others, and send each client the
global adapter truncated to the ranks it last sent.
"""

from logging import WARNING

import numpy as np
from flwr.common import (Array, ArrayRecord, FitIns, Message, RecordDict, log, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.server.strategy import FedAvg as _LegacyFedAvg
from flwr.serverapp.strategy import FedAvg as _FedAvg

from . import Aggregator, InvalidUpdate, _peft

__all__ = ["FedLoRA", "FedLoRALegacy"]


def _client_name(content, key, default):
    """The name a client gave itself in a ConfigRecord entry ``key``, else ``default``."""
    for record in content.config_records.values():
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    return default


class FedLoRA(_FedAvg):
    """FedAvg for the Message API, with fedlora's rank-heterogeneous aggregation.

    strategy, rank, allow_missing, scale, split, backend: as for ``fedlora.Aggregator``.
    client_name_key: a ConfigRecord entry a reply may carry to name its client in logs and errors
        (default "client-id"); without it the client is named by its node id.
    Other keyword arguments go to FedAvg (``weighted_by_key`` defaults to "num-examples").
    """

    def __init__(self, *, strategy="replication", rank=0, allow_missing=False, scale=None, split=None,
                 backend="auto", client_name_key="client-id", **fedavg_kwargs):
        super().__init__(**fedavg_kwargs)
        self.aggregator = Aggregator(strategy=strategy, rank=rank, allow_missing=allow_missing,
                                     scale=scale, split=split, backend=backend)
        self.client_name_key = client_name_key
        self.last_ranks = {}  # node id -> factor name -> rank, as it last sent them
        self.dropped = {}  # server round -> [(client name, reason)]

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not self.last_ranks or not messages:
            return messages
        global_np = {k: v.numpy() for k, v in arrays.items()}
        cut_cache = {}
        out = []
        for msg in messages:
            ranks = self.last_ranks.get(msg.metadata.dst_node_id)
            if ranks is None:
                out.append(msg)  # a client not heard from yet gets the whole global
                continue
            sig = tuple(sorted(ranks.items()))
            if sig not in cut_cache:
                cut = _peft.truncate_for(global_np, ranks)
                cut_cache[sig] = ArrayRecord({k: Array(v) for k, v in cut.items()})
            content = RecordDict({self.arrayrecord_key: cut_cache[sig],
                                  self.configrecord_key: msg.content[self.configrecord_key]})
            out.append(Message(content=content, dst_node_id=msg.metadata.dst_node_id,
                               message_type=msg.metadata.message_type))
        return out

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        rnd = self.aggregator.round()
        accepted = []
        for msg in valid:
            content = msg.content
            node = msg.metadata.src_node_id
            name = _client_name(content, self.client_name_key, str(node))
            try:
                if len(content.array_records) != 1 or len(content.metric_records) != 1:
                    raise InvalidUpdate(name, None, f"client '{name}': a reply needs exactly one ArrayRecord and"
                                        f" one MetricRecord, got {len(content.array_records)} and"
                                        f" {len(content.metric_records)}")
                metrics = next(iter(content.metric_records.values()))
                if self.weighted_by_key not in metrics:
                    raise InvalidUpdate(name, None, f"client '{name}': its MetricRecord has no"
                                        f" '{self.weighted_by_key}' to weight it by")
                record = next(iter(content.array_records.values()))
                tensors = {k: v.numpy() for k, v in record.items()}
                rnd.add(name, metrics[self.weighted_by_key], tensors)
            except InvalidUpdate as e:
                log(WARNING, "FedLoRA round %s: dropped client %s: %s", server_round, name, e.message)
                self.dropped.setdefault(server_round, []).append((name, e.message))
                continue
            self.last_ranks[node] = _peft.ranks(tensors)
            accepted.append(content)
        if not accepted:
            return None, None
        global_np = rnd.finish()
        rnd.close()
        arrays = ArrayRecord({k: Array(v) for k, v in global_np.items()})
        return arrays, self.train_metrics_aggr_fn(accepted, self.weighted_by_key)


class FedLoRALegacy(_LegacyFedAvg):
    """FedAvg for ``flwr.server.start_server`` with fedlora's aggregation.

    strategy, rank, allow_missing, scale, split, backend: as for ``fedlora.Aggregator``.
    keys: the PEFT names of the arrays, in the order clients send them (legacy Parameters are
        unnamed), e.g. ``list(get_peft_model_state_dict(model))``.
    client_name_key: a fit metric a client may send to name itself (default "client-id");
        without it the client is named by its proxy's cid. Weights are ``FitRes.num_examples``.
    Other keyword arguments go to flwr.server.strategy.FedAvg.
    """

    def __init__(self, keys, *, strategy="replication", rank=0, allow_missing=False, scale=None, split=None,
                 backend="auto", client_name_key="client-id", **fedavg_kwargs):
        super().__init__(**fedavg_kwargs)
        self.keys = list(keys)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("keys must be distinct PEFT names")
        self.aggregator = Aggregator(strategy=strategy, rank=rank, allow_missing=allow_missing,
                                     scale=scale, split=split, backend=backend)
        self.client_name_key = client_name_key
        self.last_ranks = {}  # cid -> factor name -> rank
        self.dropped = {}

    def __repr__(self):
        return f"FedLoRALegacy(strategy={self.aggregator.strategy!r}, rank={self.aggregator.rank})"

    def configure_fit(self, server_round, parameters, client_manager):
        pairs = super().configure_fit(server_round, parameters, client_manager)
        if not self.last_ranks:
            return pairs
        global_np = dict(zip(self.keys, parameters_to_ndarrays(parameters)))
        cache = {}
        out = []
        for client, ins in pairs:
            ranks = self.last_ranks.get(client.cid)
            if ranks is None or len(global_np) != len(self.keys):
                out.append((client, ins))
                continue
            sig = tuple(sorted(ranks.items()))
            if sig not in cache:
                cut = _peft.truncate_for(global_np, ranks)
                cache[sig] = ndarrays_to_parameters([cut[k] for k in self.keys])
            out.append((client, FitIns(cache[sig], ins.config)))
        return out

    def aggregate_fit(self, server_round, results, failures):
        if not results:
            return None, {}
        if not self.accept_failures and failures:
            return None, {}
        rnd = self.aggregator.round()
        accepted = []
        for proxy, res in results:
            name = res.metrics.get(self.client_name_key) if res.metrics else None
            name = name if isinstance(name, str) and name else str(proxy.cid)
            try:
                arrays = parameters_to_ndarrays(res.parameters)
                if len(arrays) != len(self.keys):
                    raise InvalidUpdate(name, None, f"client '{name}': sent {len(arrays)} arrays,"
                                        f" the strategy knows {len(self.keys)} PEFT names")
                tensors = dict(zip(self.keys, arrays))
                rnd.add(name, res.num_examples, tensors)
            except InvalidUpdate as e:
                log(WARNING, "FedLoRALegacy round %s: dropped client %s: %s", server_round, name, e.message)
                self.dropped.setdefault(server_round, []).append((name, e.message))
                continue
            self.last_ranks[proxy.cid] = _peft.ranks(tensors)
            accepted.append(res)
        if not accepted:
            return None, {}
        global_np = rnd.finish()
        rnd.close()
        parameters = ndarrays_to_parameters([np.asarray(global_np[k]) for k in self.keys])
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for r in accepted])
        return parameters, metrics
