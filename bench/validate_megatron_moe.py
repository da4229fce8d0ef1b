#!/usr/bin/env python3
"""Checks gen_ckpt.py's Megatron MoE torch_dist checkpoints with real torch (run under the oracle).

    validate_megatron_moe.py CKPT MERGED_DIR     (megatron-moe: data; MERGED_DIR from ckptstream)
    validate_megatron_moe.py CKPT                 (megatron-deepseek: metadata and a few chunks)

torch's own DCP reader must read the `.metadata` and every chunk it is asked for; every tensor
must be tiled by its chunks. With MERGED_DIR (a `ckptstream merge` of a megatron-moe checkpoint),
the whole checkpoint as torch's dcp.load reads it, cut the way Hugging Face names it (fc1 halves ->
gate/up, the expert axis -> one tensor per expert, QKV per query group), must equal every merged
tensor: the generator and ckptstream's mapping checked against torch at once.
"""
import glob
import json
import os
import sys

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file


def tiles(meta):
    bad = []
    for fqn, m in meta.state_dict_metadata.items():
        if not hasattr(m, "chunks"):
            continue
        covered = sum(torch.Size(c.sizes).numel() for c in m.chunks)
        if covered != torch.Size(m.size).numel():
            bad.append(fqn)
    return bad


def main():
    ckpt = sys.argv[1]
    it = sorted(glob.glob(os.path.join(ckpt, "iter_*")))[-1]
    meta = dcp.FileSystemReader(it).read_metadata()
    bad = tiles(meta)
    if bad:
        print("not tiled:", bad[:5])
        return 1
    config = json.load(open(os.path.join(ckpt, "huggingface", "config.json")))
    if len(sys.argv) < 3:  # sparse: load a few chunks through torch's planner
        # every tensor small enough to hold here (routers, fp32 biases, norms, MLA projections)
        md = meta.state_dict_metadata
        keys = [k for k, m in md.items() if hasattr(m, "chunks") and torch.Size(m.size).numel() < 1 << 24]
        sd = {k: torch.empty(md[k].size, dtype=md[k].properties.dtype) for k in keys}
        dcp.load(sd, checkpoint_id=it)
        print(f"torch reads {it}: {len(meta.state_dict_metadata)} keys tiled, {len(keys)} loaded")
        return 0
    # torch's own loader into preallocated tensors (dcp_to_torch_save wants planner_data, which
    # Megatron's saver leaves empty)
    full = {k: torch.empty(m.size, dtype=m.properties.dtype)
            for k, m in meta.state_dict_metadata.items() if hasattr(m, "chunks")}
    dcp.load(full, checkpoint_id=it)
    merged = {}
    for f in glob.glob(os.path.join(sys.argv[2], "*.safetensors")):
        merged.update(load_file(f))
    h, heads, kv, d = (config["hidden_size"], config["num_attention_heads"],
                       config["num_key_value_heads"], config["head_dim"])
    expect = {"model.embed_tokens.weight": full["embedding.word_embeddings.weight"],
              "lm_head.weight": full["output_layer.weight"],
              "model.norm.weight": full["decoder.final_layernorm.weight"]}
    for n in range(config["num_hidden_layers"]):
        p, q = f"decoder.layers.{n}.", f"model.layers.{n}."
        qkv = full[p + "self_attention.linear_qkv.weight"].view(kv, heads // kv + 2, d, h)
        expect[q + "self_attn.q_proj.weight"] = qkv[:, :heads // kv].reshape(-1, h)
        expect[q + "self_attn.k_proj.weight"] = qkv[:, heads // kv].reshape(-1, h)
        expect[q + "self_attn.v_proj.weight"] = qkv[:, heads // kv + 1].reshape(-1, h)
        expect[q + "self_attn.o_proj.weight"] = full[p + "self_attention.linear_proj.weight"]
        expect[q + "mlp.gate.weight"] = full[p + "mlp.router.weight"]
        fc1 = full[p + "mlp.experts.experts.linear_fc1.weight"]
        fc2 = full[p + "mlp.experts.experts.linear_fc2.weight"]
        f = fc1.shape[1] // 2
        for e in range(fc1.shape[0]):
            expect[f"{q}mlp.experts.{e}.gate_proj.weight"] = fc1[e, :f]
            expect[f"{q}mlp.experts.{e}.up_proj.weight"] = fc1[e, f:]
            expect[f"{q}mlp.experts.{e}.down_proj.weight"] = fc2[e]
    def same_bits(a, b):  # random bytes hold NaNs, which torch.equal never finds equal
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
            a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))

    wrong = [k for k, v in expect.items() if k not in merged or not same_bits(merged[k], v)]
    if wrong:
        print("differ from torch:", wrong[:5])
        return 1
    print(f"torch's dcp.load of {it}, cut for Hugging Face, equals {len(expect)} of the "
          f"{len(merged)} merged tensors (all experts, QKV, router, embeddings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
