"""PEFT names as the adapters see them: which tensors are LoRA factors, and of what rank."""

import numpy as np

from . import truncate


def factor(key):
    """"A" for lora_A / lora_embedding_A, "B" for lora_B / lora_embedding_B, None for other tensors."""
    parts = key.split(".")
    for p in parts:
        if p in ("lora_A", "lora_embedding_A"):
            return "A"
        if p in ("lora_B", "lora_embedding_B"):
            return "B"
    return None


def ranks(tensors):
    """Factor name -> the rank it holds (rows of A, columns of B)."""
    out = {}
    for key, value in tensors.items():
        kind = factor(key)
        shape = tuple(value.shape)
        if kind is not None and len(shape) == 2:
            out[key] = int(shape[0] if kind == "A" else shape[1])
    return out


def truncate_for(global_tensors, client_ranks):
    """The global adapter cut to the ranks a client last sent, factor by factor (a factor of a
    smaller global rank is sent whole); other tensors as they are. float32 numpy arrays."""
    by_rank = {}
    for key, value in global_tensors.items():
        have = ranks({key: value}).get(key)
        want = client_ranks.get(key)
        target = have if have is None or want is None else min(have, want)
        by_rank.setdefault(target, {})[key] = value
    cut = {}
    for target, part in by_rank.items():
        cut.update(part if target is None else truncate(part, target))
    return {k: np.asarray(cut[k]) for k in global_tensors}
