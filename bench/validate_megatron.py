#!/usr/bin/env python3
"""Checks gen_ckpt.py's Megatron layouts with real torch (run under the oracle, torch 2.6):

    validate_megatron.py [--legacy DIR] [--dist DIR] [--seed 0]

--legacy DIR (gen_ckpt.py megatron): latest_checkpointed_iteration.txt names iter_N; there is one
mp_rank_TT[_PPP]/model_optim_rng.pt per TP x PP rank of args; torch.load(weights_only=False) of
each gives {args, checkpoint_version 3.0, iteration, model, num_floating_point_operations_so_far}
with the model's keys in the order, shapes and dtype a Megatron-core GPT stage has (TE spec,
local layer numbers); the TP shards put together the Megatron way (replicated tensors equal on
every TP rank; linear_qkv, embeddings, output layer: cat on dim 0; fc1: the per-rank halves
[gate_r; up_r] regrouped to [gate; up]; linear_proj, fc2: cat on dim 1) equal, bit for bit, the
global tensors regenerated from the seed.
--dist DIR (gen_ckpt.py megatron-dist): metadata.json, common.pt (args, iteration, content
metadata), torch's FileSystemReader reads .metadata (the global keys and shapes, stacked layers
[L, ...], chunks tiling every tensor, all_local_plans), and dcp_to_torch_save's loader
(_load_state_dict + _EmptyStateDictLoadPlanner; dcp_to_torch_save itself stops on the
planner_data=None Megatron writes, reported) loads the directory; every tensor equals the seed's
global tensors (layer l of a stacked key = the layer's global tensor), the TE _extra_state byte
items load as [empty uint8 tensor] / [None].
With both, the two layouts (same seed and shapes) hold the same tensors bit for bit.
The args Namespace pickles megatron.core.transformer.enums.AttnBackend, as Megatron-LM's do:
a stub module stands in for Megatron (as RLinf's converter does).
"""
import argparse
import enum
import glob
import json
import os
import re
import sys
import tempfile
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_ckpt  # noqa: E402  (GlobalData and the module stub helper: stdlib, no torch stand-ins)


def stub_megatron():
    class AttnBackend(enum.Enum):
        flash = 1
        fused = 2
        unfused = 3
        local = 4
        auto = 5
    gen_ckpt._put(gen_ckpt._module("megatron.core.transformer.enums"), AttnBackend)


def layer_spec(a):
    """Per-layer tensors of a TE-spec GPT layer (Qwen2: qkv bias, SwiGLU, RMSNorm, no other
    biases): suffix -> (global shape, TP split), state-dict order. Restated from the format doc
    (megatron.md 2.2, 3a-3c), not taken from gen_ckpt."""
    h, f, nh, ng, d = (a.hidden_size, a.ffn_hidden_size, a.num_attention_heads,
                       a.num_query_groups, a.kv_channels)
    qkv = (nh + 2 * ng) * d
    return OrderedDict([
        ("self_attention.core_attention._extra_state", (None, "te")),
        ("self_attention.linear_proj.weight", ((h, nh * d), "row")),
        ("self_attention.linear_proj._extra_state", (None, "te")),
        ("self_attention.linear_qkv.layer_norm_weight", ((h,), "rep")),
        ("self_attention.linear_qkv.weight", ((qkv, h), "col")),
        ("self_attention.linear_qkv.bias", ((qkv,), "col")),
        ("self_attention.linear_qkv._extra_state", (None, "te")),
        ("mlp.linear_fc1.layer_norm_weight", ((h,), "rep")),
        ("mlp.linear_fc1.weight", ((2 * f, h), "glu")),
        ("mlp.linear_fc1._extra_state", (None, "te")),
        ("mlp.linear_fc2.weight", ((h, f), "row")),
        ("mlp.linear_fc2._extra_state", (None, "te"))])


def stage_spec(a, p):
    """[(key with local layer number, data name with global layer number, global shape, split)]"""
    V, h, L, P = a.padded_vocab_size, a.hidden_size, a.num_layers, a.pipeline_model_parallel_size
    out = []
    if p == 0:
        out.append(("embedding.word_embeddings.weight", None, (V, h), "col"))
    for local in range(L // P):
        g = p * (L // P) + local
        for suffix, (shape, split) in layer_spec(a).items():
            out.append((f"decoder.layers.{local}.{suffix}", f"decoder.layers.{g}.{suffix}",
                        shape, split))
    if p == P - 1:
        out += [("decoder.final_layernorm.weight", None, (h,), "rep"),
                ("output_layer.weight", None, (V, h), "col"),
                ("output_layer._extra_state", None, None, "none")]
    return [(k, n or k, s, sp) for k, n, s, sp in out]


def local_shape(shape, split, tp):
    if split == "rep":
        return shape
    if split in ("col", "glu"):
        return (shape[0] // tp,) + shape[1:]
    return (shape[0], shape[1] // tp)


class Expected:
    """The global tensors gen_ckpt wrote, regenerated from the seed."""
    def __init__(self, seed):
        self.data = gen_ckpt.GlobalData(seed)

    def __call__(self, name, shape, dtype):
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        raw = bytearray(self.data.read(name, 0, n))
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)


def same_bits(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(
        x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))


def check_args(a, what):
    for f in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
              "num_query_groups", "kv_channels", "padded_vocab_size",
              "tensor_model_parallel_size", "pipeline_model_parallel_size", "params_dtype"):
        assert hasattr(a, f), (what, f)
    assert a.swiglu and a.add_qkv_bias and not a.add_bias_linear, what
    assert a.untie_embeddings_and_output_weights and a.normalization == "RMSNorm", what
    assert a.num_query_groups % a.tensor_model_parallel_size == 0, what
    assert a.num_layers % a.pipeline_model_parallel_size == 0, what
    div = a.make_vocab_size_divisible_by * a.tensor_model_parallel_size
    assert a.padded_vocab_size % div == 0, what
    assert type(a.attention_backend).__name__ == "AttnBackend", what


def iteration_dir(root):
    it = open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip()
    d = os.path.join(root, "release" if it == "release" else f"iter_{int(it):07d}")
    assert os.path.isdir(d), d
    return int(it), d


def hf_split_shapes(globals_, a, hf):
    """The HF Qwen2 tensors of layer 0 (QKV per query group, fc1 halves, vocabulary trimmed):
    their shapes must be those config.json implies."""
    h, nh, ng, d, f = (a.hidden_size, a.num_attention_heads, a.num_query_groups,
                       a.kv_channels, a.ffn_hidden_size)
    qkv = globals_["decoder.layers.0.self_attention.linear_qkv.weight"].view(ng, nh // ng + 2, d, h)
    q = qkv[:, :nh // ng].reshape(nh * d, h)
    k = qkv[:, nh // ng].reshape(ng * d, h)
    v = qkv[:, nh // ng + 1].reshape(ng * d, h)
    gate, up = globals_["decoder.layers.0.mlp.linear_fc1.weight"].chunk(2)
    emb = globals_["embedding.word_embeddings.weight"][:hf["vocab_size"]]
    hd = hf["hidden_size"] // hf["num_attention_heads"]
    assert q.shape == (hf["num_attention_heads"] * hd, hf["hidden_size"])
    assert k.shape == v.shape == (hf["num_key_value_heads"] * hd, hf["hidden_size"])
    assert gate.shape == up.shape == (hf["intermediate_size"], hf["hidden_size"])
    assert emb.shape == (hf["vocab_size"], hf["hidden_size"])


def check_legacy(root, expected):
    iteration, d = iteration_dir(root)
    dirs = sorted(os.path.basename(x) for x in glob.glob(os.path.join(d, "mp_rank_*")))
    first = torch.load(os.path.join(d, dirs[0], "model_optim_rng.pt"), map_location="cpu",
                       weights_only=False)
    a = first["args"]
    check_args(a, "legacy args")
    tp, pp, L = a.tensor_model_parallel_size, a.pipeline_model_parallel_size, a.num_layers
    want_dirs = sorted(f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "")
                       for t in range(tp) for p in range(pp))
    assert dirs == want_dirs, (dirs, want_dirs)
    dtype = a.params_dtype
    globals_ = {}
    nfiles = ntensors = 0
    locations, storages = set(), []
    for p in range(pp):
        spec = stage_spec(a, p)
        shards = []
        for t in range(tp):
            path = os.path.join(d, f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else ""),
                                "model_optim_rng.pt")
            locs = set()
            sd = torch.load(path, weights_only=False,
                            map_location=lambda s, loc, locs=locs: (locs.add(loc), s)[1])
            locations |= locs
            assert set(sd) == {"args", "checkpoint_version", "iteration", "model",
                               "num_floating_point_operations_so_far"}, sorted(sd)
            assert sd["checkpoint_version"] == 3.0 and sd["iteration"] == iteration
            assert isinstance(sd["args"], argparse.Namespace) and sd["args"].rank == t + tp * p
            model = sd["model"]
            assert isinstance(model, OrderedDict) and hasattr(model, "_metadata")
            assert list(model) == [k for k, _, _, _ in spec], (path, list(model)[:5])
            params = []
            for key, _, shape, split in spec:
                v = model[key]
                if split == "none":
                    assert v is None, key
                elif split == "te":
                    assert v.dtype == torch.uint8 and v.numel() == 0, key
                else:
                    assert v.dtype == dtype, (key, v.dtype)
                    assert v.shape == local_shape(shape, split, tp), (key, v.shape)
                    params.append(v)
            storages.append(len({v.untyped_storage().data_ptr() for v in params}))
            ntensors += len(params)
            nfiles += 1
            shards.append(model)
        for key, name, shape, split in spec:
            if split in ("te", "none"):
                continue
            parts = [s[key] for s in shards]
            if split == "rep":
                assert all(same_bits(parts[0], x) for x in parts[1:]), f"{key} differs across TP"
                g = parts[0]
            elif split == "col":
                g = torch.cat(parts, 0)
            elif split == "row":
                g = torch.cat(parts, 1)
            else:  # glu: rank r holds [gate_r; up_r]
                halves = [x.chunk(2, 0) for x in parts]
                g = torch.cat([x[0] for x in halves] + [x[1] for x in halves], 0)
            assert g.shape == shape, (key, g.shape, shape)
            assert same_bits(g, expected(name, shape, dtype)), f"{name}: data differs"
            globals_[name] = g
    hf = json.load(open(os.path.join(root, "huggingface", "config.json")))
    assert hf["num_hidden_layers"] == L and hf["vocab_size"] <= a.padded_vocab_size
    hf_split_shapes(globals_, a, hf)
    lo, hi = min(storages), max(storages)
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    print(f"legacy {root}: iteration {iteration}, {nfiles} files (TP={tp}, PP={pp}) load in torch "
          f"{torch.__version__}: {ntensors} TP-local tensors, names/order/shapes/{str(dtype)[6:]} "
          f"as Megatron-core GPT stages (local layer numbers; TE _extra_state), storages on "
          f"{sorted(locations)}, {span} distinct storages per file "
          f"({'one DDP param buffer' if max(storages) == 1 else 'one per tensor'})")
    print(f"  TP shards put together the Megatron way -> {len(globals_)} global tensors "
          f"({L} layers, vocab padded {a.padded_vocab_size} for HF {hf['vocab_size']}): "
          f"replicated ones equal across TP, all bit-identical to the seed's; layer 0 splits "
          f"into HF q/k/v, gate/up, trimmed embedding of config.json's shapes")
    return a, globals_


def check_dist(root, expected):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner import SavePlan, WriteItemType
    iteration, d = iteration_dir(root)
    cfg = json.load(open(os.path.join(d, "metadata.json")))
    assert cfg == {"sharded_backend": "torch_dist", "sharded_backend_version": 1}, cfg
    common = torch.load(os.path.join(d, "common.pt"), map_location="cpu", weights_only=False)
    assert set(common) == {"args", "checkpoint_version", "iteration",
                           "num_floating_point_operations_so_far", "content_metadata"}, set(common)
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == iteration
    assert common["content_metadata"]["singleton_local_shards"] is False
    a = common["args"]
    check_args(a, "common.pt args")
    assert a.ckpt_format == "torch_dist"
    tp, pp, L = a.tensor_model_parallel_size, a.pipeline_model_parallel_size, a.num_layers
    dtype = a.params_dtype
    # What the model's sharded state dict has: key -> (global shape, data names per layer)
    tensors, objects = {}, set()
    for p in range(pp):
        for key, name, shape, split in stage_spec(a, p):
            m = re.fullmatch(r"decoder\.layers\.(\d+)\.(.*)", name)
            dkey = f"decoder.layers.{m.group(2)}" if m else key
            if split in ("te", "none"):
                objects.add(f"{dkey}/shard_{m.group(1)}_{L}" if m else f"{dkey}/shard_0_1")
            elif m:
                tensors.setdefault(dkey, [(L,) + shape, {}])[1][int(m.group(1))] = name
            else:
                tensors[dkey] = [shape, {None: name}]
    md = FileSystemReader(d).read_metadata()
    sdm = md.state_dict_metadata
    got_t = {k for k, v in sdm.items() if isinstance(v, TensorStorageMetadata)}
    got_b = {k for k, v in sdm.items() if isinstance(v, BytesStorageMetadata)}
    assert got_t == set(tensors), set(tensors) ^ got_t
    assert got_b == objects, objects ^ got_b
    nchunks = 0
    for k, (shape, _) in tensors.items():
        v = sdm[k]
        assert tuple(v.size) == shape and v.properties.dtype == dtype, (k, v.size, shape)
        assert sum(torch.Size(c.sizes).numel() for c in v.chunks) == torch.Size(shape).numel(), k
        nchunks += len(v.chunks)
    files = {i.relative_path for i in md.storage_data.values()}
    assert files == {f"__{r}_0.distcp" for r in range(tp * pp)}, files
    plans = md.all_local_plans
    assert len(plans) == tp * pp and all(isinstance(x, SavePlan) for x in plans)
    assert sum(len(x.items) for x in plans) == nchunks + len(objects)
    assert all(i.type in (WriteItemType.SHARD, WriteItemType.BYTE_IO)
               for x in plans for i in x.items)
    # dcp_to_torch_save's own loader: torch 2.6's _EmptyStateDictLoadPlanner indexes
    # Metadata.planner_data, which Megatron's MCoreSavePlanner (flatten_state_dict=False) leaves
    # None, so on a Megatron checkpoint it stops with a TypeError; the same load with
    # planner_data taken as {} (all keys top-level, as Megatron saves them) reads everything.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            dcp_to_torch_save(d, os.path.join(tmp, "full.pt"))
            plain = "loads it"
        except (Exception, CheckpointException) as e:  # CheckpointException: a BaseException
            err = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            plain = f"fails ({err})" if md.planner_data is None else None
            assert plain, e

    class Planner(_EmptyStateDictLoadPlanner):
        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            if metadata.planner_data is None:
                metadata.planner_data = {}
            super().set_up_planner(state_dict, metadata, is_coordinator)

    sd = {}
    _load_state_dict(sd, storage_reader=FileSystemReader(d), planner=Planner(), no_dist=True)
    assert set(sd) == set(tensors) | objects
    for k in objects:
        v = sd[k]
        assert isinstance(v, list) and len(v) == 1, (k, v)
        if k.startswith("output_layer."):
            assert v[0] is None, k
        else:
            assert v[0].dtype == torch.uint8 and v[0].numel() == 0, k
    globals_ = {}
    for k, (shape, names) in tensors.items():
        t = sd[k]
        assert t.shape == shape and t.dtype == dtype, (k, t.shape)
        for layer, name in names.items():
            g = t if layer is None else t[layer]
            assert same_bits(g, expected(name, g.shape, dtype)), f"{k} layer {layer}: data differs"
            globals_[name] = g
    print(f"dist_ckpt {root}: iteration {iteration}, metadata.json {cfg}, common.pt with args "
          f"and content_metadata {common['content_metadata']}; FileSystemReader: "
          f"{len(got_t)} tensor keys (stacked [L={L}, ...]) in {nchunks} chunks tiling them, "
          f"{len(got_b)} byte items (TE _extra_state), {len(files)} .distcp files, "
          f"all_local_plans of {len(plans)} ranks, planner_data {md.planner_data!r}")
    print(f"  torch {torch.__version__} dcp_to_torch_save {plain}")
    print(f"  its loader (_load_state_dict, _EmptyStateDictLoadPlanner, planner_data None -> {{}}) "
          f"reads all {len(sd)} entries; "
          f"{len(globals_)} per-layer global tensors bit-identical to the seed's, "
          f"_extra_state items = [empty uint8 tensor] / [None]")
    return a, globals_


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--legacy")
    ap.add_argument("--dist")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    stub_megatron()
    expected = Expected(a.seed)
    got = []
    if a.legacy:
        got.append(check_legacy(a.legacy, expected))
    if a.dist:
        got.append(check_dist(a.dist, expected))
    if len(got) == 2:
        (a1, g1), (a2, g2) = got
        if a1.padded_vocab_size == a2.padded_vocab_size and a1.num_layers == a2.num_layers:
            assert set(g1) == set(g2)
            assert all(same_bits(g1[k], g2[k]) for k in g1)
            print(f"legacy and dist_ckpt: the same {len(g1)} global tensors, bit for bit")


if __name__ == "__main__":
    main()
