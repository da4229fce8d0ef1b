#!/usr/bin/env python3
"""A merged model with packed experts equals the state dict transformers 5 holds in memory
(run under the sid oracle).

    check_packed_experts.py OUT REFERENCE_DIR

AutoModelForCausalLM.from_pretrained(REFERENCE_DIR).state_dict() (transformers packs the experts
of each MoE layer as it loads: mlp.experts.gate_up_proj [E, 2F, H], down_proj [E, H, F]) must
hold exactly OUT's tensor names, each with the same dtype, shape and bytes.
"""
import glob
import os
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    out, ref_dir = sys.argv[1:3]
    transformers.logging.set_verbosity_error()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir).state_dict()
    merged = {}
    for f in glob.glob(os.path.join(out, "*.safetensors")):
        merged.update(load_file(f))
    problems = []
    if set(ref) != set(merged):
        problems.append(f"names differ: only in memory {sorted(set(ref) - set(merged))[:5]}, "
                        f"only merged {sorted(set(merged) - set(ref))[:5]}")
    for k in sorted(set(ref) & set(merged)):
        a, b = ref[k], merged[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(
                a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)):
            problems.append(f"{k}: {tuple(b.shape)} {b.dtype} differs from memory's "
                            f"{tuple(a.shape)} {a.dtype}")
    for p in problems[:10]:
        print(p)
    if problems:
        return 1
    packed = [k for k in merged if k.endswith("experts.gate_up_proj")]
    print(f"{len(merged)} tensors equal to transformers {transformers.__version__}'s in-memory "
          f"state dict, {len(packed)} packed gate_up_proj (e.g. {packed[0]} "
          f"{tuple(merged[packed[0]].shape)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
