#!/usr/bin/env python3
"""Judges `ckptstream merge` outputs with real torch + safetensors (run under the oracle).

    check_merge_equal.py OUT EXPECTED [--bf16] [--drop NAME]... [--extra-ok]

OUT is a model directory (model.safetensors, or shards + model.safetensors.index.json, loaded the
way transformers does: through the index's weight_map) or a safetensors file. EXPECTED is a
safetensors file holding the full state dict as torch had it. Every expected tensor (minus the
--drop names) must be in OUT with the same dtype and shape and be torch.equal to it; OUT holds no
other tensor. With --bf16 the expected floating-point tensors are first cast with
.to(torch.bfloat16), i.e. what verl's merger writes. Prints one summary line.
"""
import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def load_model(path):
    if os.path.isfile(path):
        return load_file(path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        out = {}
        for name, file in weight_map.items():
            with safe_open(os.path.join(path, file), "pt") as f:
                out[name] = f.get_tensor(name)
        for file in set(weight_map.values()):  # no tensor outside the index
            with safe_open(os.path.join(path, file), "pt") as f:
                extra = set(f.keys()) - set(weight_map)
                if extra:
                    raise SystemExit(f"{file}: tensors not in the index: {sorted(extra)}")
        return out
    return load_file(os.path.join(path, "model.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("expected")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--drop", action="append", default=[])
    args = ap.parse_args()
    got = load_model(args.out)
    want = load_file(args.expected)
    for name in args.drop:
        want.pop(name)
    if args.bf16:
        want = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in want.items()}
    problems = []
    for name in sorted(set(want) - set(got)):
        problems.append(f"{name}: missing from the output")
    for name in sorted(set(got) - set(want)):
        problems.append(f"{name}: in the output, not expected")
    for name in sorted(set(want) & set(got)):
        a, b = got[name], want[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{name}: {a.dtype} {tuple(a.shape)}, expected {b.dtype} {tuple(b.shape)}")
        elif not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item()
            problems.append(f"{name}: values differ (max abs diff {diff:g})")
    for p in problems[:20]:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.out}")
        return 1
    n = sum(v.numel() for v in got.values())
    print(f"{len(got)} tensors ({n} elements) torch.equal to the expected state dict"
          f"{' cast to bfloat16' if args.bf16 else ''} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
