"""fedlora from Python: aggregation of rank-heterogeneous LoRA adapters, in-process.

The JDK 25 JVM starts once per process (through JPype) on first use. Tensors are numpy arrays or
CPU torch tensors, float32, bfloat16 (torch) or float16; they are read in place by address, never
copied, for as long as a call runs (a non-contiguous or big-endian array is made contiguous
little-endian once, first). Results are float32 numpy arrays that own their memory.

    agg = fedlora.Aggregator(strategy="replication")
    global_adapter = agg.aggregate([("phone-1", 120, phone_tensors), ("laptop-7", 800, laptop_tensors)])
    for_phone = fedlora.truncate(global_adapter, 4)
"""

from dataclasses import dataclass

from . import _bridge, _jvm
from ._jvm import FedloraUnavailable

__all__ = ["Aggregator", "Round", "Partial", "InvalidUpdate", "LoraScale", "FedloraUnavailable", "truncate",
           "backend"]

# The strategies of DESIGN §2; the Java enum may know more (Aggregator accepts any it names:
# "svd" and "stack" of DESIGN §9 too).
STRATEGIES = ("zero", "replication", "norm")

# How strategy "svd" splits U Sigma V^T into LoRA factors (DESIGN §9; Aggregator's ``split``).
SPLITS = ("flexlora", "balanced")


class InvalidUpdate(ValueError):
    """A client update fedlora refuses (NaN, a bad weight, shapes that disagree, ...).

    The round that refused it is unchanged; the caller may go on without the client.
    """

    def __init__(self, client_id, module, message):
        super().__init__(message)
        self.client_id = client_id
        self.module = module
        self.message = message


@dataclass(frozen=True)
class LoraScale:
    """A LoRA scale, PEFT's ``lora_alpha / r`` or, with ``rslora``, ``lora_alpha / sqrt(r)``."""

    alpha: float
    rslora: bool = False

    def _java(self, c):
        return c.LoraScale.rsLora(float(self.alpha)) if self.rslora else c.LoraScale.alphaOverRank(float(self.alpha))


def _translate(c, e):
    """A Java exception from fedlora as the Python exception a caller expects."""
    if isinstance(e, c.InvalidUpdateException):
        module = e.module()
        return InvalidUpdate(str(e.clientId()), None if module is None else str(module), str(e.getMessage()))
    if isinstance(e, c.IllegalArgumentException):
        return ValueError(str(e.getMessage()))
    if isinstance(e, c.IllegalStateException):
        return RuntimeError(str(e.getMessage()))
    return None


def _call(c, fn, *args):
    try:
        return fn(*args)
    except c.jpype.JException as e:
        translated = _translate(c, e)
        if translated is None:
            raise
        raise translated from None


def _client_update(c, client_id, weight, tensors, scale, scope):
    if not isinstance(client_id, str):
        client_id = str(client_id)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise InvalidUpdate(client_id, None, f"client '{client_id}': weight {weight!r} is not a number") from None
    update = c.ClientUpdate.of(client_id, weight, _bridge.java_tensors(c, tensors, client_id, scope))
    if scale is not None:
        update = update.withScale(scale._java(c))
    return update


@dataclass(frozen=True)
class Partial:
    """A round's partial aggregate as plain Python data (picklable, or a safetensors file's tensors
    and ``__metadata__``): the raw weighted sums as float32 numpy arrays and fedlora's bookkeeping.
    Merge it into a round of an aggregator with the same settings, here or on another server."""

    tensors: dict
    metadata: dict

    @property
    def client_count(self):
        import json
        return int(json.loads(self.metadata["fedlora.partial"])["clients"])

    def _java(self, c, scope):
        jmeta = c.LinkedHashMap()
        for k, v in self.metadata.items():
            jmeta.put(str(k), str(v))
        return _call(c, c.Partial.of, _bridge.java_tensors(c, self.tensors, "partial", scope), jmeta)


class Aggregator:
    """Aggregates LoRA client updates of different ranks into one global adapter.

    strategy: "zero", "replication" (the paper's, default), "norm", "svd", "stack", or any other
        strategy this fedlora's Java side names (io.fedlora.Strategy).
    rank: the global rank; 0 takes each module's largest client rank.
    allow_missing: average a module over the clients that have it instead of refusing.
    scale: a LoraScale to fold each client's LoRA scale into B (clients use the same alpha at
        their own rank unless an update carries its own scale); None averages factors as they are.
    backend: "auto" (the process-wide backend), "cuda", "vector" or "scalar".
    split: for strategy "svd" only (ValueError with any other), how U Sigma V^T becomes LoRA
        factors, ``s`` the global scale with ``scale``, else 1: "flexlora" (None, the default;
        FlexLoRA / PEFT svd: B = U Sigma / s, A = V^T) or "balanced" (PiSSA-like:
        B = U (Sigma / s)^1/2, A = (Sigma / s)^1/2 V^T). Both give the same s B A, and truncate()
        gives each client its best rank-r part of either; continued training sees different factors.
    """

    def __init__(self, strategy="replication", rank=0, allow_missing=False, scale=None, backend="auto", split=None):
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a name such as 'replication', got {type(strategy).__name__}")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        if scale is not None and not isinstance(scale, LoraScale):
            raise TypeError(f"scale must be a fedlora.LoraScale or None, got {type(scale).__name__}")
        if split is not None:
            if not isinstance(split, str):
                raise TypeError(f"split must be 'flexlora', 'balanced' or None, got {type(split).__name__}")
            if split.lower() not in SPLITS:
                raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
            if strategy.lower() != "svd":
                raise ValueError(f"split applies to strategy 'svd' only; {strategy!r} has no factorisation to split")
        self.strategy, self.rank, self.allow_missing, self.scale, self.backend = \
            strategy, rank, bool(allow_missing), scale, backend
        self.split = "flexlora" if split is None else split.lower()
        c = self._c = _jvm.classes()
        try:
            java_strategy = c.Strategy.valueOf(strategy.upper())
        except c.IllegalArgumentException:
            names = ", ".join(str(s.name()).lower() for s in c.Strategy.values())
            raise ValueError(f"strategy must be one of {names}, got {strategy!r}") from None
        builder = (c.Aggregator.builder().strategy(java_strategy)
                   .globalRank(rank).allowMissing(bool(allow_missing))
                   .split(c.Split.valueOf(self.split.upper())))
        if scale is not None:
            builder = builder.foldScale(scale._java(c))
        if backend != "auto":
            builder = builder.backend(backend)
        self._java = _call(c, builder.build)

    @property
    def backend_name(self):
        """The backend doing the arithmetic: "cuda", "vector" or "scalar"."""
        return str(self._java.backendName())

    def _update(self, client_id, weight, tensors, scale, scope):
        return _client_update(self._c, client_id, weight, tensors, scale if scale is not None else self.scale, scope)

    def aggregate(self, updates):
        """One round in one call. ``updates``: (client_id, weight, tensors[, scale]) tuples, tensors
        mapping PEFT names to arrays. Returns float32 numpy arrays in the first client's key order.
        Raises InvalidUpdate for the first client fedlora refuses (nothing is aggregated then)."""
        c = self._c
        with _bridge.CallScope(c) as scope:  # the inputs' views end with the call
            clients = c.ArrayList()
            for u in updates:
                if len(u) not in (3, 4):
                    raise ValueError("an update is (client_id, weight, tensors) or (client_id, weight, tensors, scale)")
                clients.add(self._update(u[0], u[1], u[2], u[3] if len(u) == 4 else None, scope))
            result = _call(c, self._java.aggregate, clients)
        return _bridge.numpy_tensors(c, result)

    def round(self):
        """A streaming round: add clients one by one (from any threads), merge rounds, finish."""
        return Round(self)

    def round_from_partial(self, partial):
        """A round holding ``partial`` (from Round.to_partial with the same settings), to add to,
        merge or finish. Raises ValueError, naming what is wrong, for a malformed partial."""
        rnd = Round(self)
        try:
            rnd.merge_partial(partial)
        except BaseException:
            rnd.close()
            raise
        return rnd

    def close(self):
        self._java.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Round:
    """A streaming round: memory stays at one global adapter however many clients are added.

    add, merge and finish may be called from several Python threads (the JVM does the work with
    the GIL released). A refused client raises InvalidUpdate and leaves the round unchanged.
    """

    def __init__(self, aggregator):
        self._aggregator = aggregator
        self._c = aggregator._c
        self._java = aggregator._java.newRound()

    def to_partial(self):
        """A consistent snapshot of the round as a Partial (copied into numpy); the round goes on."""
        jp = _call(self._c, self._java.toPartial)
        meta = {str(e.getKey()): str(e.getValue()) for e in jp.metadata().entrySet()}
        return Partial(_bridge.numpy_tensors(self._c, jp.tensors()), meta)

    def merge_partial(self, partial):
        """Adds a Partial's sums into this round, as if its clients had been added here."""
        if not isinstance(partial, Partial):
            raise TypeError(f"can only merge a fedlora.Partial, got {type(partial).__name__}")
        with _bridge.CallScope(self._c) as scope:  # the partial's sums are read during the call only
            _call(self._c, self._java.mergePartial, partial._java(self._c, scope))

    def add(self, client_id, weight, tensors, scale=None):
        """Adds one client; its tensors are read in place during the call and not kept."""
        with _bridge.CallScope(self._c, scoped=False) as scope:  # see _bridge: no undo copies
            _call(self._c, self._java.add, self._aggregator._update(client_id, weight, tensors, scale, scope))

    def merge(self, other):
        """Adds everything ``other`` (a round of the same aggregator) holds; ``other`` is unchanged."""
        if not isinstance(other, Round):
            raise TypeError(f"can only merge a fedlora.Round, got {type(other).__name__}")
        _call(self._c, self._java.merge, other._java)

    def finish(self):
        """The global adapter so far (float32 numpy arrays); the round may go on and finish again."""
        return _bridge.numpy_tensors(self._c, _call(self._c, self._java.finish))

    @property
    def client_count(self):
        return int(self._java.clientCount())

    def close(self):
        self._java.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def truncate(tensors, rank):
    """What a client of rank ``rank`` gets: the first ``rank`` rows of each lora_A and columns of
    each lora_B; other tensors as they are. Returns float32 numpy arrays."""
    c = _jvm.classes()
    with _bridge.CallScope(c) as scope:
        result = _call(c, c.Aggregator.truncate, _bridge.java_tensors(c, tensors, "global", scope), int(rank))
        # Tensors other than factors come back as the input's own views: copy them out in scope.
        return _bridge.numpy_tensors(c, result)


def backend():
    """The process-wide backend's name ("cuda", "vector" or "scalar"); starts the JVM."""
    c = _jvm.classes()
    with Aggregator() as a:
        return a.backend_name
