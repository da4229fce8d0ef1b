#!/usr/bin/env python3
"""The torch-based merge the benchmark compares with (run under the oracle, torch 2.6):
what verl's FSDPModelMerger and accelerate's merge-weights do.

    torch_merge.py LOCAL_DIR TARGET_DIR [--bf16]

torch.load(weights_only=False) every model_world_size_W_rank_R.pt at once (a thread pool, as
verl does), torch.cat the local tensors of each DTensor along its Shard dim (plain tensors: rank
0's), optionally .bfloat16() (verl always casts), then safetensors.torch.save_file of the whole
state dict to TARGET_DIR/model.safetensors (verl saves through save_pretrained, 5 GB shards; one
file here). Peak memory is about twice the checkpoint: every shard, then the merged copy.
"""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor, Shard


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("local_dir")
    ap.add_argument("target_dir")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    w = json.load(open(os.path.join(a.local_dir, "fsdp_config.json")))["world_size"]
    paths = [os.path.join(a.local_dir, f"model_world_size_{w}_rank_{r}.pt") for r in range(w)]
    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as ex:
        shards = list(ex.map(lambda p: torch.load(p, map_location="cpu", weights_only=False),
                             paths))
    t1 = time.time()
    merged = {}
    for key in list(shards[0].keys()):
        v = shards[0][key]
        if isinstance(v, DTensor):
            (pl,) = [p for p in v.placements if isinstance(p, Shard)]
            t = torch.cat([s[key]._local_tensor for s in shards], dim=pl.dim)
        else:
            t = v
        if a.bf16:
            t = t.bfloat16()
        merged[key] = t.contiguous()
        for s in shards:
            del s[key]
    del shards
    t2 = time.time()
    os.makedirs(a.target_dir, exist_ok=True)
    save_file(merged, os.path.join(a.target_dir, "model.safetensors"), metadata={"format": "pt"})
    t3 = time.time()
    print(f"torch merge: load {t1 - t0:.2f} s, cat {t2 - t1:.2f} s, save {t3 - t2:.2f} s")


if __name__ == "__main__":
    main()
