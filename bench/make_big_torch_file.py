#!/usr/bin/env python3
"""Writes a large torch.save file for the memory/throughput benchmark (run under the oracle).

    python3 make_big_torch_file.py PATH [--tensors 16] [--mib 128]

Default: a state dict of 16 float32 tensors of 128 MiB each (2 GiB of data) saved with
torch.save (zip format). Values are random normals, so a bf16 cast does real rounding work.
Tensors are made one at a time from a fixed seed (deterministic); torch.save needs them all in
memory at once, so this takes about tensors x mib of RAM.
"""
import argparse
import collections
import os
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--mib", type=int, default=128)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = args.mib * 1024 * 1024 // 4 // 4096
    sd = collections.OrderedDict()
    start = time.time()
    for i in range(args.tensors):
        sd[f"model.layers.{i}.mlp.weight"] = torch.randn(rows, 4096, generator=gen)
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    torch.save(sd, args.path)
    size = os.path.getsize(args.path)
    print(f"wrote {args.path}: {args.tensors} x {args.mib} MiB float32, {size} bytes "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
