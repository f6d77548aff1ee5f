"""An NVIDIA FLARE ModelAggregator that aggregates LoRA adapters of different ranks with fedlora.

Give it to the FedAvg controller: ``FedAvg(num_clients=..., num_rounds=..., aggregator=FedLoRAAggregator())``.
Each client's result goes straight into one streaming fedlora round (``accept_model``), so the
server holds one global adapter however many sites report; ``aggregate_model`` finishes the round
and ``reset_stats`` starts the next. A client fedlora refuses is dropped with one warning naming it
and why; the round goes on without it.
"""

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from . import Aggregator, InvalidUpdate, LoraScale

__all__ = ["FedLoRAAggregator"]


class FedLoRAAggregator(ModelAggregator):
    """strategy, rank, allow_missing, split, backend: as for ``fedlora.Aggregator``; ``scale_alpha`` (with
    ``rslora``) folds LoRA scales. ``weight_key``: the ``FLModel.meta`` entry that weights a client
    (default NVFlare's "NUM_STEPS_CURRENT_ROUND"; a client without it weighs 1, as in FLARE's FedAvg)."""

    def __init__(self, strategy="replication", rank=0, allow_missing=False, scale_alpha=None, rslora=False,
                 backend="auto", weight_key="NUM_STEPS_CURRENT_ROUND", split=None):
        super().__init__()
        # Kept under their parameter names: FedJob serialises a component from these attributes.
        self.strategy, self.rank, self.allow_missing = strategy, rank, allow_missing
        self.scale_alpha, self.rslora, self.backend, self.weight_key = scale_alpha, rslora, backend, weight_key
        self.split = split
        self._aggregator = None  # the JVM starts on the server, not where the job is built
        self._round = None
        self._params_type = None
        self._accepted = 0
        self.dropped = {}  # FLARE round -> [(client name, reason)]

    def _ensure_round(self):
        if self._aggregator is None:
            scale = None if self.scale_alpha is None else LoraScale(float(self.scale_alpha), bool(self.rslora))
            self._aggregator = Aggregator(strategy=self.strategy, rank=self.rank, allow_missing=self.allow_missing,
                                          scale=scale, split=self.split, backend=self.backend)
        if self._round is None:
            self._round = self._aggregator.round()
        return self._round

    def accept_model(self, model: FLModel):
        rnd = self._ensure_round()
        meta = model.meta or {}
        name = str(meta.get("client_name", "unknown client"))
        weight = meta.get(self.weight_key, 1.0)
        current = model.current_round  # FLARE's round number, counted from 0 like its own logs
        if current is None and self.fl_ctx is not None:
            current = self.fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        try:
            if not isinstance(model.params, dict) or not model.params:
                raise InvalidUpdate(name, None, f"client '{name}': no tensors (params must map PEFT names to arrays)")
            rnd.add(name, 1.0 if weight is None else weight, model.params)
        except InvalidUpdate as e:
            self.warning(f"FedLoRA round {current}: dropped client {name}: {e.message}")
            self.dropped.setdefault(current, []).append((name, e.message))
            return
        if self._params_type is None:
            self._params_type = model.params_type or ParamsType.FULL
        self._accepted += 1

    def aggregate_model(self) -> FLModel:
        rnd = self._ensure_round()
        if self._accepted == 0:
            raise RuntimeError("FedLoRA: no client of this round could be aggregated")
        params = rnd.finish()
        self.info(f"FedLoRA: aggregated {self._accepted} clients with {self.strategy} on {self._aggregator.backend_name}")
        return FLModel(params=params, params_type=self._params_type or ParamsType.FULL,
                       meta={"nr_aggregated": self._accepted})

    def reset_stats(self):
        if self._round is not None:
            self._round.close()
            self._round = None
        self._params_type = None
        self._accepted = 0
