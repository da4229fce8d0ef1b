#!/usr/bin/env python3
"""Writes a verl FSDP2 checkpoint of a given full state dict with real torch (run under an oracle).

    make_fsdp_from_safetensors.py STATE.safetensors OUT_DIR WORLD

Spawns WORLD CPU ranks (gloo); each rank distributes every tensor with
torch.distributed.tensor.distribute_tensor(t, mesh("fsdp"), [Shard(0)]) -- the DTensors FSDP2
holds for its parameters -- and saves torch.save(state_dict) as
OUT_DIR/model_world_size_WORLD_rank_R.pt, with fsdp_config.json as verl writes it. Used to put a
state dict through the DTensor pickles of the oracle's torch version.
"""
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file


def rank_main(rank, world, src, out, init_file):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    sd = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in load_file(src).items()}
    torch.save(sd, os.path.join(out, f"model_world_size_{world}_rank_{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main():
    src, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with open(os.path.join(out, "fsdp_config.json"), "w") as f:
        json.dump({"FSDP_version": 2, "world_size": world}, f, indent=4)
    fd, init_file = tempfile.mkstemp(prefix="gloo-init-")
    os.close(fd)
    os.remove(init_file)
    mp.spawn(rank_main, args=(world, src, out, init_file), nprocs=world, join=True)
    if os.path.exists(init_file):  # the gloo file store leaves it behind
        os.remove(init_file)
    print(f"{out}: {world} rank files of {src} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
