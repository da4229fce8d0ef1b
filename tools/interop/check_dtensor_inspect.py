#!/usr/bin/env python3
"""Checks `ckptstream inspect --json` of FSDP2 DTensor shards against torch (under the oracle).

    python3 check_dtensor_inspect.py INSPECT.json RANK_FILE

Every DTensor in RANK_FILE must be listed with its local shape and dtype, and a "dtensor" object
giving the global shape, the placements (Shard(d)/Replicate()/Partial()) and the mesh shape.
"""
import json
import re
import sys

import torch

from check_output import TORCH_TO_ST


def placement_text(p):
    """Canonical text of a placement: Shard(d), Replicate(), Partial() (torch objects, or the
    strings inspect prints such as "Shard(0)" / "Shard(dim=0)")."""
    if not isinstance(p, str):
        kind = type(p).__name__.lstrip("_")
        dim = getattr(p, "dim", None)
        return f"{kind}({dim if dim is not None else ''})"
    m = re.match(r"_?([A-Za-z]+)\((?:dim=)?(\d+)?", p)
    return f"{m.group(1)}({m.group(2) or ''})" if m else p


def main(argv):
    doc = json.load(open(argv[1]))
    listed = {t["name"]: t for f in doc["files"] for t in f["tensors"]}
    sd = torch.load(argv[2], map_location="cpu", weights_only=False)
    bad = 0
    for name, v in sd.items():
        t = listed.get(name)
        local = v.to_local()
        want = {"shape": list(local.shape), "global_shape": list(v.shape),
                "placements": [placement_text(p) for p in v.placements],
                "mesh_shape": list(v.device_mesh.mesh.shape)}
        if t is None or "dtensor" not in t:
            print(f"FAIL: {name}: not listed as a DTensor: {t}")
            bad += 1
            continue
        d = t["dtensor"]
        got = {"shape": t["shape"], "global_shape": d.get("global_shape"),
               "placements": [placement_text(p) for p in d.get("placements", [])],
               "mesh_shape": d.get("mesh_shape")}
        if got != want or t["dtype"] not in (str(local.dtype)[6:], TORCH_TO_ST[local.dtype]):
            print(f"FAIL: {name}: inspect says {got} {t['dtype']}, torch {want} {local.dtype}")
            bad += 1
    if bad:
        return 1
    print(f"ok: {len(sd)} DTensor shards listed with local shape, global shape, placements, mesh")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
