import json, struct, os, sys
import numpy as np
rng = np.random.default_rng(8)
mods = []
for l in range(4):
    for n, (i, o) in {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
                      "gate_proj": (4096, 11008), "up_proj": (4096, 11008), "down_proj": (11008, 4096)}.items():
        grp = "self_attn" if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        mods.append((f"base_model.model.model.layers.{l}.{grp}.{n}", i, o))
ranks = rng.integers(8, 65, 16)
for k, r in enumerate(ranks):
    d = f"c{k:02d}"; os.makedirs(d, exist_ok=True)
    header, blobs, off = {}, [], 0
    for m, i, o in mods:
        for key, shape in ((m + ".lora_A.weight", (int(r), i)), (m + ".lora_B.weight", (o, int(r)))):
            a = rng.standard_normal(shape, dtype=np.float32) * 0.01
            b = a.tobytes(); header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
            off += len(b); blobs.append(b)
    h = json.dumps(header).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    with open(f"{d}/adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]
    json.dump({"peft_type": "LORA", "r": int(r), "lora_alpha": 16, "target_modules": ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]}, open(f"{d}/adapter_config.json", "w"))
print(list(map(int, ranks)))
