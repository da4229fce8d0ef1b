#!/usr/bin/env python3
"""Writes FSDP2 DTensor shards the way verl saves them (run under the oracle).

    python3 make_dtensor.py OUTDIR [WORLD_SIZE]

Starts WORLD_SIZE CPU ranks (gloo), shards a small model with fully_shard, and each rank writes
OUTDIR/model_world_size_{W}_rank_{R}.pt = torch.save(model.state_dict()) (DTensors with
Shard(0) placements; sizes chosen so some shards are uneven). Also writes OUTDIR/full.pt, the
full state dict gathered by torch, as the reference.
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def build_model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 5),
                               torch.nn.LayerNorm(5), torch.nn.Linear(5, 3, bias=False))


def rank_main(rank, world, out, init_file):
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    model = build_model()
    fully_shard(model, mesh=mesh)
    sd = model.state_dict()
    torch.save(sd, os.path.join(out, f"model_world_size_{world}_rank_{rank}.pt"))
    full = {k: v.full_tensor() for k, v in sd.items()}
    if rank == 0:
        torch.save(full, os.path.join(out, "full.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main(argv):
    out = argv[1]
    world = int(argv[2]) if len(argv) > 2 else 2
    os.makedirs(out, exist_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    fd, init_file = tempfile.mkstemp(prefix="gloo-init-")
    os.close(fd)
    os.remove(init_file)
    mp.spawn(rank_main, args=(world, out, init_file), nprocs=world, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
