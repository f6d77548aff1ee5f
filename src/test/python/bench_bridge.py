"""What the Python bridge costs per round (not a test; timings are noisy on a shared machine).

16 Llama-7B-shaped clients, one 4096x4096 and one 11008x4096 module each (q_proj-like and
up_proj-like), ranks drawn from 8..64, float32, REPLICATION. Prints per-round medians (and
min-max) of: fedlora's own Java time (aggregate on prebuilt Java ClientUpdates, one JPype call),
the same round through fedlora.Aggregator.aggregate from numpy (wrap by address + Java + copy into
numpy), the bridge's parts (wrapping; copying the result out), a streaming round through the
bridge, and the careful torch loop of DESIGN §7.

    python bench_bridge.py [--iterations N] [--seed S]
"""

import argparse
import statistics
import time

import numpy as np
import torch

import fedlora
from fedlora import _bridge, _jvm


def make_clients(seed):
    rng = np.random.default_rng(seed)
    shapes = {"layers.0.self_attn.q_proj": (4096, 4096), "layers.0.mlp.up_proj": (4096, 11008)}
    clients = []
    for k in range(16):
        r = int(rng.integers(8, 65))
        t = {}
        for name, (n_in, n_out) in shapes.items():
            t[f"{name}.lora_A.weight"] = rng.standard_normal((r, n_in), dtype=np.float32)
            t[f"{name}.lora_B.weight"] = rng.standard_normal((n_out, r), dtype=np.float32)
        clients.append((f"client-{k}", float(rng.integers(100, 1000)), t))
    return clients


def torch_loop(clients):
    """The careful torch user's replication round: zeroed sums, add_ per client, one divide."""
    keys_a = [k for k in clients[0][2] if ".lora_A." in k]
    out = {}
    for ka in keys_a:
        kb = ka.replace(".lora_A.", ".lora_B.")
        big_r = max(t[ka].shape[0] for _, _, t in clients)
        n, m = clients[0][2][ka].shape[1], clients[0][2][kb].shape[0]
        a, b = torch.zeros(big_r, n), torch.zeros(m, big_r)
        owner = torch.zeros(big_r, dtype=torch.float64)
        for _, w, t in clients:
            ta, tb = t[ka], t[kb]
            r = ta.shape[0]
            a[:r].add_(ta, alpha=w)
            b[:, :r].add_(tb, alpha=w)
            owner[:r] += w
        inv = (1.0 / owner).to(torch.float32)
        a.mul_(inv[:, None])
        b.mul_(inv[None, :])
        out[ka], out[kb] = a, b
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    clients = make_clients(args.seed)
    input_mb = sum(a.nbytes for _, _, t in clients for a in t.values()) / 1e6
    agg = fedlora.Aggregator()
    c = _jvm.classes()
    scope = _bridge.CallScope(c, scoped=False)  # global-scope views, as Round.add makes them
    jclients = c.ArrayList()
    for cid, w, t in clients:
        jclients.add(c.ClientUpdate.of(cid, w, _bridge.java_tensors(c, t, cid, scope)))
    result = agg._java.aggregate(jclients)
    out_mb = sum(int(e.getValue().data().byteSize()) for e in result.entrySet()) / 1e6

    def wrap_only():
        with _bridge.CallScope(c) as s:
            lst = c.ArrayList()
            for cid, w, t in clients:
                lst.add(c.ClientUpdate.of(cid, w, _bridge.java_tensors(c, t, cid, s)))

    def stream():
        rnd = agg.round()
        for u in clients:
            rnd.add(*u)
        rnd.finish()
        rnd.close()

    def stream_scoped():  # what Round.add would cost on arena-scoped views (undo copies)
        rnd = agg.round()
        for cid, w, t in clients:
            with _bridge.CallScope(c) as s:
                rnd._java.add(c.ClientUpdate.of(cid, w, _bridge.java_tensors(c, t, cid, s)))
        rnd.finish()
        rnd.close()

    def java_stream():
        rnd = agg._java.newRound()
        for u in jclients:
            rnd.add(u)
        rnd.finish()
        rnd.close()

    torch.set_num_threads(2)
    tclients = [(cid, w, {k: torch.from_numpy(v) for k, v in t.items()}) for cid, w, t in clients]
    # The torch loop computes the same round (so its time is a fair comparison).
    mine, theirs = agg.aggregate(clients), torch_loop(tclients)
    for k, v in mine.items():
        err = float(np.max(np.abs(theirs[k].numpy() - v)))
        assert err <= 1e-5 * float(np.max(np.abs(v))), f"torch loop differs from fedlora on {k} by {err}"
    variants = [
        ("fedlora Java aggregate (prebuilt updates)", lambda: agg._java.aggregate(jclients)),
        ("bridge: Aggregator.aggregate from numpy", lambda: agg.aggregate(clients)),
        ("  bridge part: wrap 16 clients, close arena", wrap_only),
        ("  bridge part: copy the result into numpy", lambda: _bridge.numpy_tensors(c, result)),
        ("fedlora Java streaming round (prebuilt)", java_stream),
        ("bridge: streaming round (16 add + finish)", stream),
        ("  same on arena-scoped views (undo copies)", stream_scoped),
        ("torch loop (2 threads, DESIGN §7)", lambda: torch_loop(tclients)),
    ]
    # Interleaved, so that the machine's noise falls on every variant alike.
    times = {name: [] for name, _ in variants}
    for it in range(5 + args.iterations):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn()
            if it >= 5:
                times[name].append((time.perf_counter() - t0) * 1e3)
    rows = [(name, times[name]) for name, _ in variants]
    ranks = [t["layers.0.self_attn.q_proj.lora_A.weight"].shape[0] for _, _, t in clients]
    print(f"16 clients, ranks {sorted(ranks)}, {input_mb:.0f} MB in, {out_mb:.1f} MB out, backend "
          f"{agg.backend_name}, {args.iterations} interleaved rounds after 5 warm-up")
    for name, ms in rows:
        print(f"{name:45s} median {statistics.median(ms):7.2f} ms   (min {min(ms):7.2f}, max {max(ms):7.2f})")


if __name__ == "__main__":
    main()
