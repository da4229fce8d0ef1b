#!/usr/bin/env python3
"""Checks gen_ckpt.py's output with real torch (run under the oracle, torch 2.6):

    validate_gen.py FSDP_DIR [--dcp DCP_DIR] [--against OUT_FSDP] [--against-dcp OUT_DCP]

FSDP_DIR: torch.load(weights_only=False) of every rank file must give an OrderedDict of
DTensors (Shard(0) on a 1-D "fsdp" mesh of W ranks) or plain tensors, each DTensor's local shape
the torch.chunk piece of its global shape for that rank, and the mesh coordinate the rank; the
global tensor (torch.cat of the local tensors) must equal, bit for bit, the tensor of the same
name in OUT_FSDP/*.safetensors (ckptstream merge's output) when --against is given.
DCP_DIR: torch's own dcp_to_torch_save must load it; with --against-dcp every tensor (its model.
prefix stripped) must equal OUT_DCP's.
"""
import argparse
import glob
import json
import os
import tempfile

import torch
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor, Shard


def load_out(d):
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        out.update(load_file(p))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fsdp_dir")
    ap.add_argument("--dcp")
    ap.add_argument("--against")
    ap.add_argument("--against-dcp")
    a = ap.parse_args()
    w = json.load(open(os.path.join(a.fsdp_dir, "fsdp_config.json")))["world_size"]
    shards = []
    for r in range(w):
        sd = torch.load(os.path.join(a.fsdp_dir, f"model_world_size_{w}_rank_{r}.pt"),
                        map_location="cpu", weights_only=False)
        assert type(sd).__name__ == "OrderedDict", type(sd)
        for k, v in sd.items():
            if not isinstance(v, DTensor):
                assert isinstance(v, torch.Tensor), (k, type(v))
                continue
            assert len(v.placements) == 1 and isinstance(v.placements[0], Shard), v.placements
            assert v.placements[0].dim == 0
            mesh = v.device_mesh
            assert mesh.mesh.tolist() == list(range(w)) and mesh.mesh_dim_names == ("fsdp",)
            assert mesh.get_coordinate() == [r], mesh.get_coordinate()
            pieces = torch.empty(v.shape, dtype=torch.bool, device="meta").chunk(w, 0)
            want = pieces[r].shape if r < len(pieces) else (0,) + tuple(v.shape[1:])
            assert v._local_tensor.shape == want, (k, v._local_tensor.shape, want)
            assert v.dtype == v._local_tensor.dtype and v._spec.tensor_meta.shape == v.shape
        shards.append(sd)
    n = len(shards[0])
    print(f"FSDP {a.fsdp_dir}: {w} rank files load in torch {torch.__version__}: {n} entries, "
          f"DTensor local/global shapes, placements and mesh ok")
    if a.against:
        out = load_out(a.against)
        for k in shards[0]:
            v = shards[0][k]
            full = torch.cat([s[k]._local_tensor for s in shards]) if isinstance(v, DTensor) else v
            assert k in out, k
            assert out[k].dtype == full.dtype and out[k].shape == full.shape, k
            assert torch.equal(out[k].view(torch.uint8), full.contiguous().view(torch.uint8)), k
        assert set(out) == set(shards[0]), set(out) ^ set(shards[0])
        print(f"  ckptstream merge output {a.against}: all {len(out)} tensors bit-identical to "
              f"torch.cat of the loaded shards")
    if a.dcp:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "full.pt")
            dcp_to_torch_save(a.dcp, p)
            sd = torch.load(p, weights_only=False)["model"]
        print(f"DCP {a.dcp}: dcp_to_torch_save loads it: {len(sd)} tensors")
        if a.against_dcp:
            out = load_out(a.against_dcp)
            assert set(out) == set(sd), set(out) ^ set(sd)
            for k, t in sd.items():
                assert torch.equal(out[k].view(torch.uint8), t.view(torch.uint8)), k
            print(f"  ckptstream merge output {a.against_dcp}: all {len(out)} tensors "
                  f"bit-identical")


if __name__ == "__main__":
    main()
