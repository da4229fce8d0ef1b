#!/usr/bin/env python3
"""Recomputes a LoRA fusion from verl FSDP2 shard files with real torch and compares it with a
`ckptstream merge` output (run under the trixie oracle).

    check_lora_fuse.py CKPT_DIR OUT --alpha A [--rslora] [--adapter]

Loads every model_world_size_W_rank_R.pt with torch.load, rebuilds each full tensor from the
DTensor local shards (torch.cat along the Shard dim, as verl's merger does), then
  fuse (default):  W.float() + scale * (B.float() @ A.float()) cast to W's dtype, scale = alpha/r
                   (alpha/sqrt(r) with --rslora), names without base_model.model. / .base_layer
  --adapter:       OUT holds the unfused base model, and OUT/lora_adapter/adapter_model.safetensors
                   the adapters named base_model.model.<module>.lora_{A,B}.weight, loadable by
                   safetensors; adapter_config.json carries r and lora_alpha
and asserts torch.equal for every tensor.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import torch
from safetensors.torch import load_file


def full_state_dict(ckpt):
    files = sorted(glob.glob(os.path.join(ckpt, "model_world_size_*_rank_*.pt")),
                   key=lambda f: int(re.search(r"rank_(\d+)\.pt$", f).group(1)))
    shards = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    out = {}
    for key, value in shards[0].items():
        if hasattr(value, "_local_tensor"):
            placement = value.placements[-1]
            pieces = [s[key]._local_tensor for s in shards]
            out[key] = torch.cat(pieces, dim=placement.dim) if placement.is_shard() else pieces[0]
            assert tuple(out[key].shape) == tuple(value.shape), key
        else:
            out[key] = value
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--rslora", action="store_true")
    ap.add_argument("--adapter", action="store_true")
    args = ap.parse_args()
    sd = full_state_dict(args.ckpt)
    prefix = "base_model.model."
    want, adapter, ranks = {}, {}, set()
    for key, value in sd.items():
        name = key[len(prefix):]
        if ".lora_A." in name or ".lora_B." in name:
            module, factor = name.split(".lora_")[0], name.split(".lora_")[1][0]
            adapter[f"{prefix}{module}.lora_{factor}.weight"] = value
            continue
        name = name.replace(".base_layer.", ".")
        want[name] = value
        if key.endswith(".base_layer.weight") and not args.adapter:
            module = key[: -len(".base_layer.weight")]
            a = sd[module + ".lora_A.default.weight"]
            b = sd[module + ".lora_B.default.weight"]
            r = a.shape[0]
            ranks.add(r)
            scale = args.alpha / math.sqrt(r) if args.rslora else args.alpha / r
            want[name] = (value.float() + scale * (b.float() @ a.float())).to(value.dtype)
    got = load_file(os.path.join(args.out, "model.safetensors"))
    problems = []
    if set(got) != set(want):
        problems.append(f"names differ: missing {sorted(set(want) - set(got))}, "
                        f"extra {sorted(set(got) - set(want))}")
    for k in sorted(set(got) & set(want)):
        if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k]):
            d = (got[k].double() - want[k].double()).abs().max().item() if got[k].shape == want[k].shape else None
            problems.append(f"{k}: differs (max abs diff {d})")
    if args.adapter:
        ad = load_file(os.path.join(args.out, "lora_adapter", "adapter_model.safetensors"))
        if set(ad) != set(adapter):
            problems.append(f"adapter names differ: {sorted(set(ad) ^ set(adapter))}")
        problems += [f"adapter {k}: differs" for k in sorted(set(ad) & set(adapter))
                     if not torch.equal(ad[k], adapter[k])]
        with open(os.path.join(args.out, "lora_adapter", "adapter_config.json")) as f:
            config = json.load(f)
        r = {v.shape[0] for k, v in adapter.items() if ".lora_A." in k}
        if config.get("lora_alpha") != args.alpha or {config.get("r")} != r:
            problems.append(f"adapter_config.json: r {config.get('r')} lora_alpha {config.get('lora_alpha')}, "
                            f"expected r {r} lora_alpha {args.alpha}")
    for p in problems[:20]:
        print(p)
    if problems:
        return 1
    what = "unfused base + adapter" if args.adapter else \
        f"fused with scale {'alpha/sqrt(r)' if args.rslora else 'alpha/r'} (r {sorted(ranks)}, alpha {args.alpha})"
    print(f"{len(got)} tensors torch.equal to torch's own {what}, recomputed from the shards "
          f"(torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
