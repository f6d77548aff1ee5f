#!/usr/bin/env python3
"""Baseline for issue 4's end-to-end comparison: the research-code way, in numpy.

Reads each client's .safetensors fully into memory, zero-pads every lora_A / lora_B to the
largest rank, takes the weighted mean (ZERO) or the owner-weighted mean (REPLICATION, by
dividing each component by its owners' weight), and writes one F32 safetensors file. Standard
library plus numpy; written for fedlora's measurements, not a library.

usage: pad_then_average.py zero|replication OUT.safetensors CLIENT.safetensors...
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16}


def read(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data[start:end], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).astype(np.float32)
        out[key] = arr.reshape(info["shape"])
    return out


def write(path, tensors):
    header, offset, blobs = {}, 0, []
    for key, arr in tensors.items():
        blob = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[key] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    strategy, out_path, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    clients = [read(p) for p in paths]
    weights = np.ones(len(clients), dtype=np.float64)
    result = {}
    for key in clients[0]:
        if not key.endswith(".lora_A.weight"):
            continue
        key_b = key[: -len(".lora_A.weight")] + ".lora_B.weight"
        rank = max(c[key].shape[0] for c in clients)
        sum_a = np.zeros((rank, clients[0][key].shape[1]), dtype=np.float32)
        sum_b = np.zeros((clients[0][key_b].shape[0], rank), dtype=np.float32)
        owner = np.zeros(rank, dtype=np.float64)
        for w, c in zip(weights, clients):
            r = c[key].shape[0]
            padded_a = np.zeros_like(sum_a)
            padded_a[:r] = c[key]
            padded_b = np.zeros_like(sum_b)
            padded_b[:, :r] = c[key_b]
            sum_a += np.float32(w) * padded_a
            sum_b += np.float32(w) * padded_b
            owner[:r] += w
        divisor = owner if strategy == "replication" else np.full(rank, weights.sum())
        scale = np.where(divisor > 0, 1.0 / np.where(divisor > 0, divisor, 1), 0).astype(np.float32)
        result[key] = sum_a * scale[:, None]
        result[key_b] = sum_b * scale[None, :]
    write(out_path, result)


if __name__ == "__main__":
    main()
