"""Referee for `ckptstream convert --to torch` of a DCP checkpoint: torch's own
dcp_to_torch_save of the same checkpoint, and torch.load(weights_only=True) of ours.

usage: check_dcp_to_torch.py DCP_DIR OURS.pt PREFIX   (PREFIX: dotted app-state path, or "")
Checks that our file holds exactly the model tensors of torch's file, in the same key order,
each torch.equal (dtype and shape included); keys compared after dropping leading _orig_mod. /
module. components, as ckptstream does. Exit 1 with a message on any difference.
"""
import sys
import tempfile

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

dcp_dir, ours_path, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
with tempfile.TemporaryDirectory() as tmp:
    dcp_to_torch_save(dcp_dir, f"{tmp}/ref.pt")
    ref = torch.load(f"{tmp}/ref.pt", weights_only=False)
for part in filter(None, prefix.split(".")):
    ref = ref[part]
ours = torch.load(ours_path, weights_only=True)


def normalise(key):
    # ckptstream drops the wrappers' components (torch.compile's _orig_mod., DDP's module.).
    parts = key.split(".")
    while parts and parts[0] in ("_orig_mod", "module"):
        parts.pop(0)
    return ".".join(parts)


ref = {normalise(k): v for k, v in ref.items() if isinstance(v, torch.Tensor)}
if list(ours) != list(ref):
    print(f"key order differs:\n ours {list(ours)[:6]}...\n ref  {list(ref)[:6]}...")
    sys.exit(1)
for name, tensor in ref.items():
    if ours[name].dtype != tensor.dtype or not torch.equal(ours[name], tensor):
        print(f"{name}: differs ({ours[name].dtype} vs {tensor.dtype})")
        sys.exit(1)
print(f"{ours_path}: {len(ours)} tensors, same order and values as dcp_to_torch_save")
