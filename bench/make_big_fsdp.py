#!/usr/bin/env python3
"""A >= 2 GB verl FSDP2 checkpoint for the `merge` memory benchmark, and the torch merge it is
compared with. Run both under the trixie oracle (tools/oracle-run.sh).

    make_big_fsdp.py make OUT_DIR [--world 2] [--layers 2]
    make_big_fsdp.py torch-merge LOCAL_DIR TARGET_DIR [--bf16]

`make` writes OUT_DIR/model_world_size_W_rank_R.pt (W gloo CPU ranks, torch.multiprocessing.spawn),
fsdp_config.json and huggingface/config.json for a float32 Llama-shaped model with realistic
shapes: vocab 32000 x hidden 4096 embedding and lm_head, and per layer q/k/v/o [4096, 4096],
gate/up [11008, 4096], down [4096, 11008] (2 layers: 2.66 GB of parameters). Fast and still real
FSDP2: the model is built on the meta device, fully_shard() per layer and at the root, then
to_empty(cpu) allocates only each rank's shards, which are filled with random normals (a
generator seeded per rank); the files hold exactly the DTensors fully_shard makes (local tensors
that are views into FSDP2's padded per-parameter buffers), saved with torch.save(state_dict).

`torch-merge` is what verl's model merger does (verl/model_merger/fsdp_model_merger.py): torch.load
every rank file at once (thread pool), torch.cat the local shards of each key along its Shard dim
(.bfloat16() first with --bf16, as verl always does), then safetensors.torch.save_file of the
whole state dict into TARGET_DIR/model.safetensors.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

import torch

VOCAB, HIDDEN, INTER = 32000, 4096, 11008


def build(layers):
    import torch.nn as nn

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(self, n, nn.Linear(HIDDEN, HIDDEN, bias=False))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(HIDDEN, INTER, bias=False)
            self.up_proj = nn.Linear(HIDDEN, INTER, bias=False)
            self.down_proj = nn.Linear(INTER, HIDDEN, bias=False)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attn()
            self.mlp = Mlp()
            self.input_layernorm = nn.LayerNorm(HIDDEN, bias=False)
            self.post_attention_layernorm = nn.LayerNorm(HIDDEN, bias=False)

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = nn.LayerNorm(HIDDEN, bias=False)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Body()
            self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    return LM()


def make_rank(rank, world, out, layers, init_file):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    with torch.device("meta"):
        model = build(layers)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(1000 + rank)
    with torch.no_grad():
        for p in model.parameters():
            local = p._local_tensor
            local.copy_(torch.randn(local.shape, generator=gen) * 0.02)
    torch.save(model.state_dict(), os.path.join(out, f"model_world_size_{world}_rank_{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def make(args):
    import torch.multiprocessing as mp

    os.makedirs(os.path.join(args.out, "huggingface"), exist_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with open(os.path.join(args.out, "fsdp_config.json"), "w") as f:
        json.dump({"FSDP_version": 2, "world_size": args.world}, f, indent=4)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": args.layers, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": VOCAB, "tie_word_embeddings": False,
              "torch_dtype": "float32"}
    with open(os.path.join(args.out, "huggingface", "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    fd, init_file = tempfile.mkstemp(prefix="gloo-init-")
    os.close(fd)
    os.remove(init_file)
    start = time.time()
    mp.spawn(make_rank, args=(args.world, args.out, args.layers, init_file), nprocs=args.world, join=True)
    if os.path.exists(init_file):  # the gloo file store leaves it behind
        os.remove(init_file)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out) if f.endswith(".pt"))
    print(f"wrote {args.out}: {args.world} rank files, {size} bytes in {time.time() - start:.1f} s")


def torch_merge(args):
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import save_file

    files = sorted((f for f in os.listdir(args.local_dir) if re.match(r"model_world_size_\d+_rank_\d+\.pt$", f)),
                   key=lambda f: int(re.search(r"rank_(\d+)", f).group(1)))
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count())) as pool:
        shards = list(pool.map(lambda f: torch.load(os.path.join(args.local_dir, f), map_location="cpu",
                                                    weights_only=False), files))
    merged = {}
    for key in list(shards[0]):
        value = shards[0][key]
        pieces = [s[key]._local_tensor if hasattr(s[key], "_local_tensor") else s[key] for s in shards]
        if args.bf16:
            pieces = [p.bfloat16() for p in pieces]
        placement = value.placements[-1] if hasattr(value, "placements") else None
        if placement is not None and placement.is_shard():
            merged[key] = torch.cat(pieces, dim=placement.dim).contiguous()
        else:
            merged[key] = pieces[0].contiguous()
    os.makedirs(args.target_dir, exist_ok=True)
    save_file(merged, os.path.join(args.target_dir, "model.safetensors"), metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--world", type=int, default=2)
    m.add_argument("--layers", type=int, default=2)
    t = sub.add_parser("torch-merge")
    t.add_argument("local_dir")
    t.add_argument("target_dir")
    t.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    make(args) if args.cmd == "make" else torch_merge(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
