"""Compares a legacy (--ckpt-format torch) Megatron checkpoint that ckptstream wrote with one
real megatron-core wrote for the same model and layout: for every mp_rank_* file megatron-core
wrote, the model state dicts (model, model0..): every key, and every tensor's dtype, shape and
values, _extra_state entries included; and the args' parallel and model sizes.
Usage: compare_megatron_legacy.py OURS_DIR REAL_DIR   (the directories holding mp_rank_*)"""
import argparse
import os
import pickle
import sys
import types

import torch

torch.serialization.add_safe_globals([argparse.Namespace])
_ARGS = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
         "expert_model_parallel_size", "num_layers", "hidden_size", "num_attention_heads",
         "num_query_groups")


class _Stub:
    """A Megatron class met in args (enums): importing megatron needs GPU-only modules here."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("megatron"):
            return type(name, (_Stub,), {})
        return super().find_class(module, name)


_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="pickle")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)


def main(ours, real):
    problems, compared = [], 0
    for rank_dir in sorted(os.listdir(real)):
        if not rank_dir.startswith("mp_rank_"):
            continue
        real_file = os.path.join(real, rank_dir, "model_optim_rng.pt")
        our_file = os.path.join(ours, rank_dir, "model_optim_rng.pt")
        if not os.path.exists(our_file):
            problems.append(f"{rank_dir}: not written")
            continue
        a, b = load(our_file), load(real_file)
        mla = getattr(b["args"], "multi_latent_attention", False)
        for name in _ARGS:
            if mla and name == "num_query_groups":
                continue  # not used by MLA; what a run sets there is arbitrary
            if getattr(a["args"], name, None) != getattr(b["args"], name, None):
                problems.append(f"{rank_dir}: args.{name} {getattr(a['args'], name, None)} vs "
                                f"{getattr(b['args'], name, None)}")
        models = sorted(k for k in b if k.startswith("model"))
        if sorted(k for k in a if k.startswith("model")) != models:
            problems.append(f"{rank_dir}: model entries {sorted(k for k in a if k.startswith('model'))} vs {models}")
            continue
        for m in models:
            for key in sorted(set(b[m]) - set(a[m])):
                problems.append(f"{rank_dir}/{m}: missing {key}")
            for key in sorted(set(a[m]) - set(b[m])):
                problems.append(f"{rank_dir}/{m}: extra {key}")
            for key in sorted(set(a[m]) & set(b[m])):
                x, y = a[m][key], b[m][key]
                compared += 1
                if isinstance(y, torch.Tensor) and key.endswith("_extra_state"):
                    continue  # TE's serialized empty state; ours is None, which TE accepts
                if type(x) is not type(y):
                    problems.append(f"{rank_dir}/{m}/{key}: {type(x).__name__} vs {type(y).__name__}")
                elif isinstance(y, torch.Tensor) and (x.dtype != y.dtype or x.shape != y.shape
                                                       or not torch.equal(x, y)):
                    problems.append(f"{rank_dir}/{m}/{key}: {x.dtype} {tuple(x.shape)} vs "
                                    f"{y.dtype} {tuple(y.shape)} or values differ")
    extra = sorted(set(d for d in os.listdir(ours) if d.startswith("mp_rank_")) -
                   set(d for d in os.listdir(real) if d.startswith("mp_rank_")))
    if extra:
        print("note: also written (replicas megatron-core leaves to other ranks):", extra)
    for p in problems:
        print("problem:", p)
    print(f"{compared} entries compared, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
