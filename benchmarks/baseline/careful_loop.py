#!/usr/bin/env python3
"""The peers issue 8 measures fedlora's batch round against: what a careful user writes in torch
or numpy, in-process, data already in memory.

One REPLICATION round per repetition: a zeroed global A [R, in] and B [out, R] per module, then
per client `a[:r].add_(A_k, alpha=w)` and `b[:, :r].add_(B_k, alpha=w)` (numpy:
`a[:r] += w * A_k`, the idiomatic form, which makes a temporary), then one divide by the
per-component owner weights. Float32, the shapes of the JMH workload (one 4096x4096 and one
11008x4096 module), the ranks passed in (bin/fedlora-bench prints the JMH run's own ranks), the
client weights 1 + (k mod 7) as there. Reports the median and best time and GB/s counted as the
Java report does (every client's factors read once + the global adapter written once).

usage: careful_loop.py torch|numpy RANKS(comma-separated) [--threads N] [--repeats N] [--json FILE]
"""
import argparse
import json
import statistics
import time

import numpy as np

MODULES = [(4096, 4096), (4096, 11008)]  # (in, out): q_proj-like and up_proj-like


def bytes_moved(ranks):
    big = max(ranks)
    read = sum(r * (i + o) for r in ranks for (i, o) in MODULES)
    written = sum(big * (i + o) for (i, o) in MODULES)
    return 4 * (read + written)


def clients(ranks, make):
    rng = np.random.default_rng(20240625)
    out = []
    for k, r in enumerate(ranks):
        mods = []
        for (i, o) in MODULES:
            a = rng.random((r, i), dtype=np.float32) * 2 - 1
            b = rng.random((o, r), dtype=np.float32) * 2 - 1
            mods.append((make(a), make(b)))
        out.append((1.0 + k % 7, r, mods))
    return out


def owner_weights(data, big):
    owners = np.zeros(big, dtype=np.float64)
    for w, r, _ in data:
        owners[:r] += w
    return owners


def round_torch(torch, data, big, inv):
    result = []
    for m, (i, o) in enumerate(MODULES):
        a = torch.zeros(big, i)
        b = torch.zeros(o, big)
        for w, r, mods in data:
            a_k, b_k = mods[m]
            a[:r].add_(a_k, alpha=w)
            b[:, :r].add_(b_k, alpha=w)
        a.mul_(inv[:, None])
        b.mul_(inv[None, :])
        result.append((a, b))
    return result


def round_numpy(data, big, inv):
    result = []
    for m, (i, o) in enumerate(MODULES):
        a = np.zeros((big, i), dtype=np.float32)
        b = np.zeros((o, big), dtype=np.float32)
        for w, r, mods in data:
            a_k, b_k = mods[m]
            a[:r] += np.float32(w) * a_k
            b[:, :r] += np.float32(w) * b_k
        a *= inv[:, None]
        b *= inv[None, :]
        result.append((a, b))
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("lib", choices=["torch", "numpy"])
    parser.add_argument("ranks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--label", default="")
    parser.add_argument("--json")
    args = parser.parse_args()
    ranks = [int(x) for x in args.ranks.split(",")]
    big = max(ranks)
    if args.lib == "torch":
        import torch
        torch.set_num_threads(args.threads)
        data = clients(ranks, torch.from_numpy)
        inv = torch.from_numpy((1.0 / owner_weights(data, big)).astype(np.float32))
        run = lambda: round_torch(torch, data, big, inv)  # noqa: E731
        version = "torch " + torch.__version__ + f", {torch.get_num_threads()} threads"
    else:
        data = clients(ranks, lambda x: x)
        inv = (1.0 / owner_weights(data, big)).astype(np.float32)
        run = lambda: round_numpy(data, big, inv)  # noqa: E731
        version = "numpy " + np.__version__
    for _ in range(3):
        run()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    moved = bytes_moved(ranks)
    med, best = statistics.median(times), min(times)
    line = {"peer": args.lib, "label": args.label, "version": version, "ranks": ranks, "median_ms": med,
            "best_ms": best, "gbps": moved / (med * 1e-3) / 1e9, "bytes": moved, "repeats": args.repeats}
    print(f"{args.lib:5s} {args.label:8s} {version}: median {med:.2f} ms, best {best:.2f} ms, "
          f"{line['gbps']:.1f} GB/s ({moved / 1e6:.1f} MB per round)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
