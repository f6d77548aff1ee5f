"""A float64 numpy rendering of fedlora's arithmetic (DESIGN §2), for the tests to hold results to."""

import numpy as np


def as_float64(value):
    """The values fedlora reads from an input array (numpy or torch, any of its dtypes), in float64."""
    try:
        import torch
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float64).numpy()
    except ImportError:
        pass
    return np.asarray(value, dtype=np.float64)


def factor_kind(key):
    if ".lora_A." in key or key.endswith(".lora_A") or ".lora_embedding_A" in key:
        return "A"
    if ".lora_B." in key or key.endswith(".lora_B") or ".lora_embedding_B" in key:
        return "B"
    return None


def partner(key):
    for a, b in ((".lora_A.", ".lora_B."), (".lora_embedding_A", ".lora_embedding_B")):
        if a in key:
            return key.replace(a, b)
    raise KeyError(key)


def aggregate(updates, strategy="replication", rank=0):
    """updates: (client_id, weight, tensors); returns name -> float64 array in the first client's order."""
    first = updates[0][2]
    out = {}
    for key in first:
        kind = factor_kind(key)
        if kind == "B":
            continue
        if kind is None:
            total = sum(w for _, w, _ in updates)
            out[key] = sum(w * as_float64(t[key]) for _, w, t in updates) / total
            continue
        key_b = partner(key)
        a_list = [as_float64(t[key]) for _, _, t in updates]
        b_list = [as_float64(t[key_b]) for _, _, t in updates]
        weights = [float(w) for _, w, _ in updates]
        if strategy == "norm":
            weights = [np.linalg.norm(b @ a) for a, b in zip(a_list, b_list)]
        big_r = rank or max(a.shape[0] for a in a_list)
        n, m = a_list[0].shape[1], b_list[0].shape[0]
        sa, sb = np.zeros((big_r, n)), np.zeros((m, big_r))
        owner = np.zeros(big_r)
        for a, b, w in zip(a_list, b_list, weights):
            kept = min(a.shape[0], big_r)
            sa[:kept] += w * a[:kept]
            sb[:, :kept] += w * b[:, :kept]
            owner[:kept] += w
        if strategy == "replication":
            inv = np.where(owner > 0, 1.0 / np.where(owner > 0, owner, 1.0), 0.0)
        else:
            inv = np.full(big_r, 1.0 / sum(weights))
        out[key] = sa * inv[:, None]
        out[key_b] = sb * inv[None, :]
    return {k: out[k] for k in first}


def assert_close(test, got, want, rel=1e-5, what=""):
    """Every tensor within rel * max|want| (plus a hair for all-zero tensors) of the float64 reference."""
    test.assertEqual(list(got), list(want), f"{what}: keys or their order differ")
    for k in want:
        g, w = got[k], want[k]
        test.assertEqual(g.shape, w.shape, f"{what}: {k} shape")
        test.assertEqual(g.dtype, np.float32, f"{what}: {k} dtype")
        err = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        bound = rel * max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-30)
        test.assertLessEqual(err, bound, f"{what}: {k} differs from the float64 reference by {err:.3g} > {bound:.3g}")
