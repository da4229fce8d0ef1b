#!/usr/bin/env python3
"""Synthetic sharded checkpoints for the benchmarks, written without torch (Python 3 stdlib only).

    gen_ckpt.py fsdp OUT --size 5GB [--world-size 8] [--dtype bf16|fp32] [--seed 0]
    gen_ckpt.py dcp  OUT --size 5GB [--world-size 8] [--dtype bf16|fp32]
    gen_ckpt.py deepseek OUT [--world-size 16] [--layout fsdp]     (~1.34 TB declared, sparse)
    gen_ckpt.py megatron OUT --size 5GB [--tp 2] [--pp 2] [--dtype bf16|fp32] [--dist-optim]
    gen_ckpt.py megatron-dist OUT --size 5GB [--tp 2] [--pp 2] [--dtype bf16|fp32]
    gen_ckpt.py megatron-moe OUT --size 5GB [--ep 8]          (Qwen3-MoE shapes, torch_dist)
    gen_ckpt.py megatron-deepseek OUT [--ep 8] [--layers 61]  (DeepSeek-V3 + MTP, sparse)
    gen_ckpt.py deepseek-hf OUT [--layers 61] [--no-fp8]      (DeepSeek-V3 as published, sparse)

fsdp: a verl FSDP2 actor directory (docs/formats/verl.md §1):
  model_world_size_W_rank_R.pt   torch.save zip of the rank's state dict, byte for byte as torch
                                 2.6 writes it: STORED records, 64-byte aligned data through the
                                 "FB" local extra field, bit-3 data descriptors, records in the
                                 order data.pkl, byteorder, data/<keys, lexicographic>, version,
                                 .data/serialization_id, zip64 extras for offsets/sizes >= 4 GiB,
                                 and always the zip64 end records; data.pkl is a protocol-2 pickle
                                 with the structure of a real FSDP2 state dict: OrderedDict (with
                                 _metadata) of DTensors = _rebuild_from_type_v2(
                                 _rebuild_wrapper_subclass, DTensor, args, (None, {_local_tensor,
                                 _spec: DTensorSpec(DeviceMesh, (Shard(0),), TensorMeta)})), the
                                 local tensor a _rebuild_tensor_v2 over its own storage record.
  fsdp_config.json               {"FSDP_version": 2, "world_size": W}
  huggingface/config.json        a Qwen2 config of the generated shapes
dcp: a torch.distributed.checkpoint directory of the same model saved as {"model": state_dict}:
  .metadata (protocol-4 pickle of stand-in classes carrying torch 2.6's module/qualnames) and
  __R_0.distcp (each local chunk an embedded torch.save zip, prefix archive/).
deepseek: the DeepSeek-V3 (671B) tensor list, bf16, in the fsdp layout (or --layout dcp); every
  tensor's data is a hole (seek past it), so ~1.34 TB declared takes a few GB on disk. For
  `ckptstream plan` at scale (the data are zeros; do not merge it).
megatron: a Megatron-LM legacy checkpoint (--ckpt-format torch; docs/formats/megatron.md
  §2) of a Megatron-core GPT model (TE layer spec) with Qwen2 shapes: OUT/latest_checkpointed_
  iteration.txt, OUT/iter_0000100/mp_rank_TT[_PPP]/model_optim_rng.pt (torch.save zips of {args:
  argparse.Namespace, checkpoint_version: 3.0, iteration, model: the stage's state dict with TP-
  local tensors and local layer numbers, num_floating_point_operations_so_far}; saved as with
  --no-save-optim --no-save-rng), OUT/huggingface/config.json.
megatron-dist: the same model as a Megatron-core dist_ckpt, torch_dist backend (§1), as core
  <= v0.18 writes it: OUT/iter_0000100/{metadata.json, common.pt, .metadata, __R_0.distcp} with
  the global sharded keys (stacked layers [L, ...], fc1 as [gate; up]).
  Both: the data of each global tensor is a function of (--seed, its name) only (GlobalData), so
  the two layouts of one seed hold the same model at any TP/PP and validate_megatron.py recomputes
  every tensor.

deepseek-hf: DeepSeek-V3 (671B) as deepseek-ai/DeepSeek-V3 publishes it on the hub: 163
  model-000NN-of-000163.safetensors + model.safetensors.index.json + config.json, every linear
  weight float8_e4m3fn with its float32 <name>_scale_inv [ceil(M/128), ceil(N/128)]
  (quantization_config weight_block_size [128, 128]); embeddings, norms, routers, head bf16
  (--no-fp8: all bf16). Every tensor's data is a hole: for `convert --to megatron --dry-run` at
  scale, never to be converted for real.

Sizes: a Qwen2.5 config (0.5B/1.5B/3B/7B/14B/32B shapes: hidden, intermediate, heads, vocab) is
picked by the requested size and its layer count scaled so the tensor bytes match it (+-1 layer).
Data are pseudo-random bytes (slices at random offsets of a 64 MiB os.urandom pool: fast,
incompressible), written in 8 MiB blocks, never a whole file in memory. Deterministic per --seed
apart from the pool (os.urandom).
"""
import argparse
import collections
import hashlib
import json
import math
import os
import pickle
import random
import re
import struct
import sys
import time
import types
import uuid
import zlib

MIB = 1 << 20
U32MAX = 0xFFFFFFFF
ALIGN = 64
DTYPES = {  # name: (torch dtype name, storage class, element size)
    "bf16": ("bfloat16", "BFloat16Storage", 2),
    "fp16": ("float16", "HalfStorage", 2),
    "fp32": ("float32", "FloatStorage", 4),
    "int32": ("int32", "IntStorage", 4),
    "uint8": ("uint8", "ByteStorage", 1),
}
CONFIG_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# ---------------------------------------------------------------------------------------------
# Model shapes

QWEN = [  # name, hidden, intermediate, heads, kv heads, layers, vocab
    ("qwen2.5-0.5b", 896, 4864, 14, 2, 24, 151936),
    ("qwen2.5-1.5b", 1536, 8960, 12, 2, 28, 151936),
    ("qwen2.5-3b", 2048, 11008, 16, 2, 36, 151936),
    ("qwen2.5-7b", 3584, 18944, 28, 4, 28, 152064),
    ("qwen2.5-14b", 5120, 13824, 40, 8, 48, 152064),
    ("qwen2.5-32b", 5120, 27648, 40, 8, 64, 152064),
]


def qwen_layer(h, i, heads, kv):
    d = h // heads
    return [("self_attn.q_proj.weight", (h, h)), ("self_attn.q_proj.bias", (h,)),
            ("self_attn.k_proj.weight", (kv * d, h)), ("self_attn.k_proj.bias", (kv * d,)),
            ("self_attn.v_proj.weight", (kv * d, h)), ("self_attn.v_proj.bias", (kv * d,)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (i, h)), ("mlp.up_proj.weight", (i, h)),
            ("mlp.down_proj.weight", (h, i)),
            ("input_layernorm.weight", (h,)), ("post_attention_layernorm.weight", (h,))]


def numel(shape):
    return math.prod(shape)


def qwen_model(size_bytes, esize):
    """(config dict, [(name, shape)]) of a Qwen2-shaped model whose tensors take ~size_bytes."""
    def total(c, layers):
        _, h, i, heads, kv, _, v = c
        per = sum(numel(s) for _, s in qwen_layer(h, i, heads, kv))
        return (2 * v * h + h + layers * per) * esize, per * esize

    best = min(QWEN, key=lambda c: abs(math.log(size_bytes / total(c, c[5])[0])))
    name, h, i, heads, kv, _, v = best
    if 2 * v * h * esize > 0.3 * size_bytes:  # tiny sizes: a smaller vocabulary
        v = max(256, int(0.3 * size_bytes / (2 * h * esize)) // 128 * 128)
        best = (name, h, i, heads, kv, 1, v)
    fixed, per = total(best, 0)
    layers = max(1, round((size_bytes - fixed) / per))
    tensors = [("model.embed_tokens.weight", (v, h))]
    for n in range(layers):
        tensors += [(f"model.layers.{n}.{k}", s) for k, s in qwen_layer(h, i, heads, kv)]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return qwen_config(name, h, i, heads, kv, layers, v), tensors


def qwen_config(name, h, i, heads, kv, layers, v):
    """The Hugging Face config.json of a Qwen2 model of these shapes."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": h,
        "initializer_range": 0.02, "intermediate_size": i, "max_position_embeddings": 32768,
        "max_window_layers": layers, "model_type": "qwen2", "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "transformers_version": "4.51.3", "use_cache": True, "use_sliding_window": False,
        "vocab_size": v, "_ckptstream_bench_shapes_from": name,
    }


def deepseek_v3(layers=61):
    """DeepSeek-V3 (671B) as the HF checkpoint names its tensors (MTP layer 61 left out)."""
    h, v, dense, experts, moe_i, dense_i = 7168, 129280, 3, 256, 2048, 18432
    q_lora, kv_lora, heads, nope, rope, vdim = 1536, 512, 128, 128, 64, 128
    t = [("model.embed_tokens.weight", (v, h), None)]
    for n in range(layers):
        p = f"model.layers.{n}."
        t += [(p + "input_layernorm.weight", (h,), None),
              (p + "post_attention_layernorm.weight", (h,), None),
              (p + "self_attn.q_a_proj.weight", (q_lora, h), None),
              (p + "self_attn.q_a_layernorm.weight", (q_lora,), None),
              (p + "self_attn.q_b_proj.weight", (heads * (nope + rope), q_lora), None),
              (p + "self_attn.kv_a_proj_with_mqa.weight", (kv_lora + rope, h), None),
              (p + "self_attn.kv_a_layernorm.weight", (kv_lora,), None),
              (p + "self_attn.kv_b_proj.weight", (heads * (nope + vdim), kv_lora), None),
              (p + "self_attn.o_proj.weight", (h, heads * vdim), None)]
        if n < dense:
            t += [(p + "mlp.gate_proj.weight", (dense_i, h), None),
                  (p + "mlp.up_proj.weight", (dense_i, h), None),
                  (p + "mlp.down_proj.weight", (h, dense_i), None)]
            continue
        t += [(p + "mlp.gate.weight", (experts, h), None),
              # a persistent fp32 buffer in the HF model: a plain tensor on every FSDP rank
              (p + "mlp.gate.e_score_correction_bias", (experts,), "buffer")]
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            t += [(q + "gate_proj.weight", (moe_i, h), None), (q + "up_proj.weight", (moe_i, h), None),
                  (q + "down_proj.weight", (h, moe_i), None)]
        q = p + "mlp.shared_experts."
        t += [(q + "gate_proj.weight", (moe_i, h), None), (q + "up_proj.weight", (moe_i, h), None),
              (q + "down_proj.weight", (h, moe_i), None)]
    t += [("model.norm.weight", (h,), None), ("lm_head.weight", (v, h), None)]
    config = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "hidden_size": h, "intermediate_size": dense_i, "moe_intermediate_size": moe_i,
        "num_hidden_layers": layers, "first_k_dense_replace": dense, "n_routed_experts": experts,
        "n_shared_experts": 1, "num_experts_per_tok": 8, "num_attention_heads": heads,
        "num_key_value_heads": heads, "q_lora_rank": q_lora, "kv_lora_rank": kv_lora,
        "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": vdim,
        "vocab_size": v, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "num_nextn_predict_layers": 0, "rms_norm_eps": 1e-06, "rope_theta": 10000,
        "max_position_embeddings": 163840,
    }
    return config, t


def write_deepseek_hf(out, layers, fp8):
    """The hub layout of DeepSeek-V3 (see the module doc), data as holes."""
    import json
    import struct
    config, tensors = deepseek_v3(layers)
    entries = []  # (name, dtype, shape, nbytes)
    quantized = 0
    for name, shape, kind in tensors:
        if kind == "buffer":
            entries.append((name, "F32", shape, numel(shape) * 4))
            continue
        linear = (len(shape) == 2 and name.endswith(".weight") and "embed_tokens" not in name
                  and "lm_head" not in name and "mlp.gate.weight" not in name)
        if fp8 and linear:
            entries.append((name, "F8_E4M3", shape, numel(shape)))
            grid = (-(-shape[0] // 128), -(-shape[1] // 128))
            entries.append((name + "_scale_inv", "F32", grid, numel(grid) * 4))
            quantized += 1
        else:
            entries.append((name, "BF16", shape, numel(shape) * 2))
    files, current, size = [], [], 0
    per_file = sum(e[3] for e in entries) // 163 + 1
    for e in entries:
        if current and size + e[3] > per_file:
            files.append(current)
            current, size = [], 0
        current.append(e)
        size += e[3]
    files.append(current)
    os.makedirs(out, exist_ok=True)
    weight_map, total = {}, 0
    for i, group in enumerate(files):
        fname = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, nbytes in group:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            weight_map[name] = fname
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(os.path.join(out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + offset)
        total += offset
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if fp8:
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                         "quant_method": "fp8", "weight_block_size": [128, 128]}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return total, len(files), quantized


def chunk_rows(n, w, r):
    """torch.chunk semantics (FSDP Shard(0)): (first row, rows) of rank r's piece."""
    c = -(-n // w) if n else 0
    start = min(n, c * r)
    return start, max(0, min(n, start + c) - start)


def contiguous_stride(shape):
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= d
    return tuple(reversed(s))


# ---------------------------------------------------------------------------------------------
# Stand-ins for the torch objects, registered under torch's module names so that Python's own
# pickler writes the same opcodes torch.save does (torch.save *is* Python's pickler plus
# persistent_id).

class _Fake:
    pass


# Stand-in classes are registered under the module paths torch's pickles name.
def _module(name):
    """sys.modules[name], made empty (with its parents) if absent."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[name]


def _put(mod, obj, name=None):
    """obj as mod.name, named so that pickle writes that global."""
    name = name or obj.__name__
    obj.__module__ = mod.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(mod, name, obj)
    return obj


def fake_torch():
    if "_ckptstream_fake" in globals():
        return globals()["_ckptstream_fake"]
    module, put = _module, _put

    torch = module("torch")
    if getattr(torch, "__file__", None):
        raise RuntimeError("gen_ckpt's torch stand-ins must not run next to real torch")
    ns = types.SimpleNamespace()

    class Size(tuple):
        def __reduce__(self):
            return (Size, (tuple(self),))
    ns.Size = put(torch, Size, "Size")

    class dtype:
        def __init__(self, name):
            self.name = name

        def __reduce__(self):
            return self.name
    put(torch, dtype, "dtype")
    ns.dtypes = {}
    for name in ("float32", "bfloat16", "float16", "int32", "int64", "uint8"):
        d = dtype(name)
        setattr(torch, name, d)
        ns.dtypes[name] = d

    ns.storage = {}
    for n in ("FloatStorage", "BFloat16Storage", "HalfStorage", "IntStorage", "ByteStorage"):
        ns.storage[n] = put(torch, type(n, (), {}), n)

    class device:
        def __init__(self, kind):
            self.kind = kind

        def __reduce__(self):
            return (device, (self.kind,))
    ns.device = put(torch, device, "device")

    ser = module("torch.serialization")

    def _get_layout(name):
        return name
    put(ser, _get_layout)

    class Layout:
        def __reduce__(self):
            return (_get_layout, ("torch.strided",))
    ns.strided = Layout()

    utils = module("torch._utils")

    def _rebuild_tensor_v2(*a):
        return a

    def _rebuild_wrapper_subclass(*a):
        return a
    put(utils, _rebuild_tensor_v2)
    put(utils, _rebuild_wrapper_subclass)
    tensor_mod = module("torch._tensor")

    def _rebuild_from_type_v2(*a):
        return a
    put(tensor_mod, _rebuild_from_type_v2)

    class Storage:
        """A storage: pickled as a persistent id ('storage', cls, key, location, numel). Its bytes
        are `content`, or written by `source(f) -> crc32`, or else come from the Filler."""
        def __init__(self, kind, nbytes, esize, content=None, source=None, location="cpu"):
            self.kind, self.nbytes, self.esize, self.content = kind, nbytes, esize, content
            self.source, self.location = source, location
            self.key = None
    ns.Storage = Storage

    class Tensor:
        def __init__(self, storage, shape, offset=0):
            self.storage, self.shape, self.offset = storage, tuple(shape), offset

        def __reduce_ex__(self, proto):
            return (_rebuild_tensor_v2, (self.storage, self.offset, self.shape,
                                         contiguous_stride(self.shape), False,
                                         collections.OrderedDict()))
    ns.Tensor = Tensor

    dt_mod = module("torch.distributed.tensor")

    class DTensor:
        def __init__(self, local, gshape, dtype, spec):
            self.local, self.gshape, self.dtype, self.spec = local, tuple(gshape), dtype, spec

        def __reduce_ex__(self, proto):
            args = (DTensor, self.dtype, self.gshape, contiguous_stride(self.gshape), 0,
                    ns.strided, device("cpu"), False)
            state = (None, {"_local_tensor": self.local, "_spec": self.spec})
            return (_rebuild_from_type_v2, (_rebuild_wrapper_subclass, DTensor, args, state))
    ns.DTensor = put(dt_mod, DTensor, "DTensor")

    spec_mod = module("torch.distributed.tensor._dtensor_spec")

    class DTensorSpec(_Fake):
        pass
    ns.DTensorSpec = put(spec_mod, DTensorSpec, "DTensorSpec")
    TensorMeta = collections.namedtuple("TensorMeta", ["shape", "stride", "dtype"])
    ns.TensorMeta = put(spec_mod, TensorMeta, "TensorMeta")
    pl_mod = module("torch.distributed.tensor.placement_types")

    class Shard(_Fake):
        pass
    ns.Shard = put(pl_mod, Shard, "Shard")
    mesh_mod = module("torch.distributed.device_mesh")

    class DeviceMesh(_Fake):
        pass
    ns.DeviceMesh = put(mesh_mod, DeviceMesh, "DeviceMesh")
    globals()["_ckptstream_fake"] = ns
    return ns


class TorchPickler(pickle.Pickler):
    """torch.save's pickler: storages become persistent ids, keyed in order of first sight."""
    def __init__(self, f, ns):
        super().__init__(f, protocol=2)
        self.ns = ns
        self.storages = []

    def persistent_id(self, obj):
        if isinstance(obj, self.ns.Storage):
            if obj.key is None:
                obj.key = str(len(self.storages))
                self.storages.append(obj)
            return ("storage", self.ns.storage[obj.kind], obj.key, obj.location,
                    obj.nbytes // obj.esize)
        return None


def torch_pickle(obj, ns):
    import io
    buf = io.BytesIO()
    p = TorchPickler(buf, ns)
    p.dump(obj)
    return buf.getvalue(), p.storages


# ---------------------------------------------------------------------------------------------
# Data: random bytes from a pool, or holes

class Filler:
    def __init__(self, seed, sparse):
        self.sparse = sparse
        self.rng = random.Random(seed)
        self.pool = None if sparse else memoryview(os.urandom(64 * MIB + 8 * MIB))
        self.bytes = 0

    def write(self, f, n):
        """Writes n bytes at f's position; returns their CRC-32 (0 for holes, as torch writes
        with compute_crc32=False)."""
        self.bytes += n
        if self.sparse:
            f.seek(n, os.SEEK_CUR)
            return 0
        crc = 0
        while n:
            k = min(n, 8 * MIB)
            off = self.rng.randrange(0, 64 * MIB) & ~7
            block = self.pool[off:off + k]
            f.write(block)
            crc = zlib.crc32(block, crc)
            n -= k
        return crc


# ---------------------------------------------------------------------------------------------
# The torch.save zip writer (miniz as torch 2.6 drives it)

class ZipWriter:
    def __init__(self, f, prefix, filler):
        self.f, self.prefix, self.filler = f, prefix, filler
        self.base = f.tell()  # embedded zips (DCP) align relative to their own start
        self.entries = []

    def add(self, name, data=None, size=None, source=None):
        """A record of bytes `data`, or of `size` bytes written by `source(f) -> crc32`, or of
        `size` filler bytes."""
        f = self.f
        name_b = f"{self.prefix}/{name}".encode()
        size = len(data) if data is not None else size
        cursor = f.tell() - self.base
        z64 = b""
        if size >= U32MAX or cursor >= U32MAX:
            if size >= U32MAX:
                z64 += struct.pack("<QQ", size, 0)
            if cursor >= U32MAX:
                z64 += struct.pack("<Q", cursor)
            z64 = struct.pack("<HH", 1, len(z64)) + z64
        start = cursor + 30 + len(name_b) + len(z64) + 4
        pad = (-start) % ALIGN
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        flags = 0x0808 if size else 0x0800
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0,
                            len(name_b), len(extra)) + name_b + extra)
        if data is not None:
            f.write(data)
            crc = zlib.crc32(data)
        elif source is not None:
            crc = source(f)
        else:
            crc = self.filler.write(f, size)
        if size:
            if z64:
                f.write(struct.pack("<IIQQ", 0x08074B50, crc, size, size))
            else:
                f.write(struct.pack("<IIII", 0x08074B50, crc, size, size))
        self.entries.append((name_b, crc, size, cursor, flags))

    def finish(self):
        f = self.f
        cd_start = f.tell() - self.base
        out = []
        for name_b, crc, size, cursor, flags in self.entries:
            z = b""
            if size >= U32MAX:
                z += struct.pack("<QQ", size, size)
            if cursor >= U32MAX:
                z += struct.pack("<Q", cursor)
            if z:
                z = struct.pack("<HH", 1, len(z)) + z
            out.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, flags, 0, 0, 0, crc,
                                   min(size, U32MAX), min(size, U32MAX), len(name_b), len(z), 0,
                                   0, 0, 0, min(cursor, U32MAX)) + name_b + z)
        cd = b"".join(out)
        f.write(cd)
        n = len(self.entries)
        z64_at = cd_start + len(cd)
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, len(cd),
                            cd_start))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                            min(len(cd), U32MAX), min(cd_start, U32MAX), 0))


def write_torch_zip(f, prefix, pkl, storages, filler, rng):
    """torch 2.6 record order: data.pkl, byteorder, data/<key> sorted as strings, version,
    .data/serialization_id."""
    z = ZipWriter(f, prefix, filler)
    z.add("data.pkl", pkl)
    z.add("byteorder", b"little")
    for s in sorted(storages, key=lambda s: s.key):
        if s.content is not None:
            z.add(f"data/{s.key}", s.content)
        elif s.source is not None:
            z.add(f"data/{s.key}", size=s.nbytes, source=s.source)
        else:
            z.add(f"data/{s.key}", size=s.nbytes)
    z.add("version", b"3\n")
    z.add(".data/serialization_id", "".join(str(rng.randrange(10)) for _ in range(40)).encode())
    z.finish()


# ---------------------------------------------------------------------------------------------
# Layouts

def rank_state_dict(ns, tensors, w, r, dt, mesh_hash):
    """The state dict FSDP2 (1-D mesh of W ranks, Shard(0)) saves on rank r."""
    tname, skind, esize = DTYPES[dt]
    mesh_t = ns.Tensor(ns.Storage("IntStorage", 4 * w, 4,
                                  b"".join(struct.pack("<i", i) for i in range(w))), (w,))
    mesh = ns.DeviceMesh()
    mesh.__dict__.update({
        "device_type": "cpu", "mesh": mesh_t, "mesh_dim_names": ("fsdp",),
        "_flatten_mesh_list": tuple(range(w)), "_thread_id": None,
        "_dim_group_infos": [("ptd:0", list(range(w)), "0")], "_coordinate_on_dim": [r],
        "_hash": mesh_hash})
    sd = collections.OrderedDict()
    meta = collections.OrderedDict()
    meta[""] = {"version": 1}
    rng = random.Random(1000 + r)
    for item in tensors:
        name, shape, kind = item if len(item) == 3 else (*item, None)
        if kind == "buffer":  # plain fp32 tensor, the same on every rank
            st = ns.Storage("FloatStorage", 4 * numel(shape), 4)
            sd[name] = ns.Tensor(st, shape)
            continue
        _, rows = chunk_rows(shape[0], w, r)
        local_shape = (rows,) + tuple(shape[1:])
        st = ns.Storage(skind, esize * numel(local_shape), esize)
        local = ns.Tensor(st, local_shape)
        shard = ns.Shard()
        shard.dim = 0
        spec = ns.DTensorSpec()
        spec.__dict__.update({
            "mesh": mesh, "placements": (shard,),
            "tensor_meta": ns.TensorMeta(ns.Size(shape), contiguous_stride(shape),
                                         ns.dtypes[tname]),
            "_hash": rng.getrandbits(63) - (1 << 62)})
        sd[name] = ns.DTensor(local, shape, ns.dtypes[tname], spec)
    for name in sd:  # module prefixes, as nn.Module.state_dict() records them
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            meta.setdefault(".".join(parts[:i]), {"version": 1})
    sd._metadata = meta
    return sd


def write_fsdp(out, tensors, config, w, dt, seed, sparse):
    ns = fake_torch()
    os.makedirs(os.path.join(out, "huggingface"), exist_ok=True)
    with open(os.path.join(out, "fsdp_config.json"), "w") as f:
        json.dump({"FSDP_version": 2, "world_size": w}, f, indent=4)
    with open(os.path.join(out, "huggingface", "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    filler = Filler(seed, sparse)
    rng = random.Random(seed)
    mesh_hash = rng.getrandbits(63)
    for r in range(w):
        t0 = time.time()
        sd = rank_state_dict(ns, tensors, w, r, dt, mesh_hash)
        pkl, storages = torch_pickle(sd, ns)
        stem = f"model_world_size_{w}_rank_{r}"
        with open(os.path.join(out, stem + ".pt"), "wb") as f:
            write_torch_zip(f, stem, pkl, storages, filler, rng)
        print(f"  {stem}.pt: {len(storages)} storages, pickle {len(pkl)} B, "
              f"{os.path.getsize(os.path.join(out, stem + '.pt'))} B in {time.time() - t0:.1f} s",
              flush=True)
    return filler.bytes


def dcp_classes():
    """Stand-ins for torch 2.6's DCP metadata classes (as tools/fixtures/make_dcp_fixtures.py
    --synthetic makes them), pickled with protocol 4 like torch's .metadata."""
    import dataclasses
    import enum
    import pathlib
    ns = fake_torch()
    if hasattr(ns, "dcp"):
        return ns.dcp
    module, put = _module, _put

    @dataclasses.dataclass
    class ChunkStorageMetadata:
        offsets: object
        sizes: object

    class _MEM_FORMAT_ENCODING(enum.Enum):
        TORCH_CONTIGUOUS_FORMAT = 0
        TORCH_CHANNELS_LAST = 1
        TORCH_PRESERVE_FORMAT = 2

        def __reduce_ex__(self, proto):
            return self.__class__, (self._value_,)

    @dataclasses.dataclass
    class TensorProperties:
        dtype: object
        layout: object = None
        requires_grad: bool = False
        memory_format: object = None
        pin_memory: bool = False

        def __getstate__(self):
            return (self.dtype, ns.strided, self.requires_grad,
                    _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT, self.pin_memory)

    @dataclasses.dataclass
    class TensorStorageMetadata:
        properties: object
        size: object
        chunks: list

    @dataclasses.dataclass
    class Metadata:
        state_dict_metadata: dict
        planner_data: object = None
        storage_data: object = None
        storage_meta: object = None

    @dataclasses.dataclass(frozen=True)
    class MetadataIndex:
        fqn: str
        offset: object = None
        index: object = dataclasses.field(default=None, hash=False, compare=False)

        def __init__(self, fqn, offset=None, index=None):
            object.__setattr__(self, "fqn", fqn)
            object.__setattr__(self, "index", index)
            if offset is not None:
                object.__setattr__(self, "offset", ns.Size(offset))

    @dataclasses.dataclass
    class _StorageInfo:
        relative_path: str
        offset: int
        length: int

    @dataclasses.dataclass
    class StorageMeta:
        checkpoint_id: object = None
        save_id: str = ""
        load_id: object = None

    m = module("torch.distributed.checkpoint.metadata")
    for c in (ChunkStorageMetadata, TensorStorageMetadata, Metadata, MetadataIndex,
              TensorProperties, StorageMeta, _MEM_FORMAT_ENCODING):
        put(m, c)
    put(module("torch.distributed.checkpoint.filesystem"), _StorageInfo)
    ns.dcp = types.SimpleNamespace(**{c.__name__: c for c in (
        ChunkStorageMetadata, TensorProperties, TensorStorageMetadata, Metadata, MetadataIndex,
        _StorageInfo, StorageMeta)})
    ns.dcp.PosixPath = pathlib.PosixPath
    return ns.dcp


def write_dcp(out, tensors, config, w, dt, seed, sparse, prefix="model"):
    ns = fake_torch()
    k = dcp_classes()
    tname, skind, esize = DTYPES[dt]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    filler = Filler(seed, sparse)
    rng = random.Random(seed)
    sdm, planner, storage = {}, {}, {}
    for item in tensors:
        name, shape, kind = item if len(item) == 3 else (*item, None)
        fqn = f"{prefix}.{name}"
        d = "float32" if kind == "buffer" else tname
        sdm[fqn] = k.TensorStorageMetadata(k.TensorProperties(ns.dtypes[d]), ns.Size(shape), [])
        planner[fqn] = (prefix, name)
    for r in range(w):
        t0 = time.time()
        rel = f"__{r}_0.distcp"
        with open(os.path.join(out, rel), "wb") as f:
            for idx, item in enumerate(tensors):
                name, shape, kind = item if len(item) == 3 else (*item, None)
                fqn = f"{prefix}.{name}"
                if kind == "buffer":
                    if r:
                        continue  # replicated: written once (plan de-duplication)
                    start, rows, d, sk, es = 0, shape[0], "float32", "FloatStorage", 4
                else:
                    start, rows = chunk_rows(shape[0], w, r)
                    d, sk, es = tname, skind, esize
                local = (rows,) + tuple(shape[1:])
                st = ns.Storage(sk, es * numel(local), es)
                pkl, storages = torch_pickle(ns.Tensor(st, local), ns)
                at = f.tell()
                write_torch_zip(f, "archive", pkl, storages, filler, rng)
                offs = (start,) + (0,) * (len(shape) - 1)
                sdm[fqn].chunks.append(k.ChunkStorageMetadata(ns.Size(offs), ns.Size(local)))
                storage[k.MetadataIndex(fqn, offs, len(sdm[fqn].chunks) - 1)] = \
                    k._StorageInfo(rel, at, f.tell() - at)
        print(f"  {rel}: {os.path.getsize(os.path.join(out, rel))} B in {time.time() - t0:.1f} s",
              flush=True)
    md = k.Metadata(sdm, planner, storage,
                    k.StorageMeta(k.PosixPath(os.path.abspath(out)), "%032x" % rng.getrandbits(128)))
    with open(os.path.join(out, ".metadata"), "wb") as f:
        pickle.dump(md, f, protocol=4)
    return filler.bytes


# ---------------------------------------------------------------------------------------------
# Megatron layouts (docs/formats/megatron.md): a Megatron-core GPT model (Transformer
# Engine layer spec, as Megatron-LM builds it by default) of Qwen2 shapes, TP x PP, DP = 1.

def megatron_classes():
    """Stand-ins for what Megatron's pickles name besides dcp_classes(): torch 2.6's
    BytesStorageMetadata and the save-plan classes (Megatron keeps the gathered local plans in
    `.metadata` as `all_local_plans`), and megatron.core's AttnBackend enum (in args)."""
    import enum
    ns = fake_torch()
    k = dcp_classes()
    if hasattr(ns, "mcore"):
        return ns.mcore

    class BytesStorageMetadata:  # no fields: NEWOBJ without BUILD
        pass

    class WriteItemType(enum.Enum):
        TENSOR = 1
        SHARD = 2
        BYTE_IO = 3

        def __reduce_ex__(self, proto):
            return self.__class__, (self._value_,)

    class TensorWriteData:
        def __init__(self, chunk, properties, size):
            self.chunk, self.properties, self.size = chunk, properties, size

    class WriteItem:
        def __init__(self, index, type, tensor_data=None):
            self.index, self.type, self.tensor_data = index, type, tensor_data

    class SavePlan:
        def __init__(self, items, storage_data=None, planner_data=None):
            self.items, self.storage_data, self.planner_data = items, storage_data, planner_data

    class AttnBackend(enum.Enum):
        flash = 1
        fused = 2
        unfused = 3
        local = 4
        auto = 5

        def __reduce_ex__(self, proto):
            return self.__class__, (self._value_,)

    _put(_module("torch.distributed.checkpoint.metadata"), BytesStorageMetadata)
    pl = _module("torch.distributed.checkpoint.planner")
    for c in (WriteItemType, TensorWriteData, WriteItem, SavePlan):
        _put(pl, c)
    _put(_module("megatron.core.transformer.enums"), AttnBackend)
    ns.mcore = types.SimpleNamespace(
        BytesStorageMetadata=BytesStorageMetadata, WriteItemType=WriteItemType,
        TensorWriteData=TensorWriteData, WriteItem=WriteItem, SavePlan=SavePlan,
        AttnBackend=AttnBackend, dcp=k)
    return ns.mcore


class GlobalData:
    """The data of the global (unsharded) Megatron tensors, TP/PP-independent and reproducible:
    byte g of the tensor with data name N is pool[(base(N) + g) % POOL], where the pool is
    random.Random(seed).randbytes(POOL) and base(N) a hash of (seed, N). Every shard is written as
    segments of its global tensor, so the legacy and the dist_ckpt layouts (any TP, PP) of one
    seed hold the same model, and a checker recomputes each global tensor from the seed alone.
    Data names: the mcore names with global layer numbers (decoder.layers.5.mlp.linear_fc1.weight,
    its global tensor [gate; up] as dist_ckpt stores it)."""
    POOL = 64 * MIB

    def __init__(self, seed):
        self.seed = seed
        self.pool = memoryview(random.Random(seed).randbytes(self.POOL))
        self.zeros = memoryview(bytes(MIB))
        self.bases = {}
        self.bytes = 0

    def base(self, name):
        b = self.bases.get(name)
        if b is None:
            h = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=8).digest()
            b = self.bases[name] = int.from_bytes(h, "little") % self.POOL
        return b

    def pieces(self, segments):
        """The bytes of segments [(data name, or None for zeros, byte offset, length)]."""
        for name, off, n in segments:
            if name is None:
                while n:
                    k = min(n, len(self.zeros))
                    yield self.zeros[:k]
                    n -= k
                continue
            pos = (self.base(name) + off) % self.POOL
            while n:
                k = min(n, self.POOL - pos, 8 * MIB)
                yield self.pool[pos:pos + k]
                n -= k
                pos = (pos + k) % self.POOL

    def source(self, segments):
        """A ZipWriter record source writing these segments (CRC-32 as it goes)."""
        def write(f):
            crc = 0
            for b in self.pieces(segments):
                f.write(b)
                crc = zlib.crc32(b, crc)
                self.bytes += len(b)
            return crc
        return write

    def read(self, name, off, n):
        return b"".join(bytes(b) for b in self.pieces([(name, off, n)]))


def megatron_model(size_bytes, esize, tp, pp):
    """A Qwen2.5 shape (as qwen_model) that Megatron can split: heads and FFN divisible by TP,
    query groups raised to TP where TP does not divide them (Megatron asserts num_query_groups %
    TP == 0), layers a multiple of PP (even pipeline split), the vocabulary padded to a multiple
    of 128 * TP (make_vocab_size_divisible_by=128, as Megatron pads it)."""
    cands = []
    for name, h, i, heads, kv, layers, v in QWEN:
        if heads % tp == 0 and i % tp == 0:
            cands.append((name, h, i, heads, kv if kv % tp == 0 else tp, layers, v))
    if not cands:
        raise SystemExit(f"--tp {tp}: no Qwen2.5 shape has its heads and FFN divisible by it")

    def per_layer(c):
        _, h, i, heads, kv, _, _ = c
        return sum(numel(s) for _, s in qwen_layer(h, i, heads, kv)) * esize

    def total(c, layers):
        return (2 * c[6] * c[1] + c[1]) * esize + layers * per_layer(c)

    best = min(cands, key=lambda c: abs(math.log(size_bytes / total(c, c[5]))))
    name, h, i, heads, kv, _, v = best
    if 2 * v * h * esize > 0.3 * size_bytes:  # tiny sizes: a smaller vocabulary, an odd
        # multiple of 128 like Qwen's 151936 = 1187 x 128, so that TP > 1 pads it
        v = max(384, int(0.3 * size_bytes / (2 * h * esize)) // 256 * 256 + 128)
        best = (name, h, i, heads, kv, 1, v)
    layers = max(pp, round((size_bytes - total(best, 0)) / per_layer(best) / pp) * pp)
    div = 128 * tp
    m = types.SimpleNamespace(name=name, h=h, ffn=i, heads=heads, groups=kv, d=h // heads,
                              layers=layers, vocab=v, padded_vocab=-(-v // div) * div, tp=tp, pp=pp)
    m.config = qwen_config(name, h, i, heads, kv, layers, v)
    return m


MEntry = collections.namedtuple("MEntry", "key dist layer data shape split")


def mcore_layer(m):
    """(name suffix, per-layer global shape, TP split) of one TE-spec GPT layer in state-dict
    order. Splits: rep (replicated), col (dim 0: column-parallel; linear_qkv's rows are the
    query groups [q x heads/groups, k, v] per group, so a rank's rows are its groups), glu (fc1:
    rank r holds [gate_r; up_r]), row (dim 1: row-parallel), te (Transformer Engine's
    _extra_state: an empty uint8 tensor without FP8), none (an _extra_state of None)."""
    h, f, nh, ng, d = m.h, m.ffn, m.heads, m.groups, m.d
    qkv = (nh + 2 * ng) * d
    return [("self_attention.core_attention._extra_state", None, "te"),
            ("self_attention.linear_proj.weight", (h, nh * d), "row"),
            ("self_attention.linear_proj._extra_state", None, "te"),
            ("self_attention.linear_qkv.layer_norm_weight", (h,), "rep"),
            ("self_attention.linear_qkv.weight", (qkv, h), "col"),
            ("self_attention.linear_qkv.bias", (qkv,), "col"),
            ("self_attention.linear_qkv._extra_state", None, "te"),
            ("mlp.linear_fc1.layer_norm_weight", (h,), "rep"),
            ("mlp.linear_fc1.weight", (2 * f, h), "glu"),
            ("mlp.linear_fc1._extra_state", None, "te"),
            ("mlp.linear_fc2.weight", (h, f), "row"),
            ("mlp.linear_fc2._extra_state", None, "te")]


def mcore_stage(m, p):
    """Pipeline stage p's state dict entries: legacy key (local layer number), dist_ckpt key
    (stacked layers), global layer, data name (global layer number), global shape, split."""
    per = m.layers // m.pp
    out = []
    if p == 0:
        n = "embedding.word_embeddings.weight"
        out.append(MEntry(n, n, None, n, (m.padded_vocab, m.h), "col"))
    for local in range(per):
        g = p * per + local
        for suffix, shape, split in mcore_layer(m):
            out.append(MEntry(f"decoder.layers.{local}.{suffix}", f"decoder.layers.{suffix}", g,
                              f"decoder.layers.{g}.{suffix}", shape, split))
    if p == m.pp - 1:
        for n, shape, split in (("decoder.final_layernorm.weight", (m.h,), "rep"),
                                ("output_layer.weight", (m.padded_vocab, m.h), "col"),
                                ("output_layer._extra_state", None, "none")):
            out.append(MEntry(n, n, None, n, shape, split))
    return out


def tp_chunks(shape, split, tp, r):
    """TP rank r's pieces of a global tensor, in local order: [(global offsets, sizes, element
    segments [(offset, count)] of the global tensor)]. The legacy local tensor is the pieces
    concatenated on dim 0; dist_ckpt stores each piece as a chunk (fc1: gate_r at fragment r and
    up_r at fragment r + TP of 2 TP, so its global tensor is [gate; up])."""
    rows, inner = shape[0], numel(shape[1:])
    zero = (0,) * (len(shape) - 1)
    if split == "rep":
        return [((0,) + zero, shape, [(0, numel(shape))])]
    if split == "col":
        n = rows // tp
        return [((r * n,) + zero, (n,) + shape[1:], [(r * n * inner, n * inner)])]
    if split == "glu":
        n = rows // 2 // tp
        return [((half + r * n,) + zero, (n,) + shape[1:], [((half + r * n) * inner, n * inner)])
                for half in (0, rows // 2)]
    if split == "row":
        cols = shape[1]
        c = cols // tp
        segs = []
        for i in range(rows):  # coalesced: one segment when TP = 1
            if segs and segs[-1][0] + segs[-1][1] == i * cols + r * c:
                segs[-1] = (segs[-1][0], segs[-1][1] + c)
            else:
                segs.append((i * cols + r * c, c))
        return [((0, r * c), (rows, c), segs)]
    raise ValueError(split)


def local_shape(chunks):
    if len(chunks) == 1:
        return tuple(chunks[0][1])
    return (sum(c[1][0] for c in chunks),) + tuple(chunks[0][1][1:])


def megatron_args(m, dt, fmt, dist_optim, iteration, save_dir):
    """The argparse.Namespace Megatron-LM pickles as `args` (the fields a converter reads, and
    some common others; names as megatron/training/arguments.py spells them)."""
    ns = fake_torch()
    mk = megatron_classes()
    tname = DTYPES[dt][0]
    return argparse.Namespace(
        num_layers=m.layers, encoder_num_layers=m.layers, decoder_num_layers=None,
        hidden_size=m.h, ffn_hidden_size=m.ffn, num_attention_heads=m.heads, kv_channels=m.d,
        group_query_attention=m.groups != m.heads, num_query_groups=m.groups,
        max_position_embeddings=32768, position_embedding_type="rope",
        rotary_base=1000000, rotary_percent=1.0, rotary_interleaved=False,
        rotary_seq_len_interpolation_factor=None, use_rope_scaling=False,
        make_vocab_size_divisible_by=128, normalization="RMSNorm", norm_epsilon=1e-06,
        apply_layernorm_1p=False, apply_residual_connection_post_layernorm=False,
        openai_gelu=False, squared_relu=False, swiglu=True,
        untie_embeddings_and_output_weights=True, add_bias_linear=False, add_qkv_bias=True,
        qk_layernorm=False, attention_dropout=0.0, hidden_dropout=0.0, init_method_std=0.02,
        transformer_impl="transformer_engine", attention_backend=mk.AttnBackend.auto,
        multi_latent_attention=False, num_experts=None, moe_ffn_hidden_size=None,
        moe_layer_freq=1, moe_grouped_gemm=False, moe_shared_expert_intermediate_size=None,
        mtp_num_layers=None,
        tensor_model_parallel_size=m.tp, pipeline_model_parallel_size=m.pp,
        virtual_pipeline_model_parallel_size=None, num_layers_per_virtual_pipeline_stage=None,
        decoder_first_pipeline_num_layers=None, decoder_last_pipeline_num_layers=None,
        account_for_embedding_in_pipeline_split=False,
        account_for_loss_in_pipeline_split=False, pipeline_model_parallel_layout=None,
        sequence_parallel=m.tp > 1, context_parallel_size=1, expert_model_parallel_size=1,
        expert_tensor_parallel_size=m.tp, data_parallel_size=1, world_size=m.tp * m.pp,
        rank=0, fp16=dt == "fp16", bf16=dt == "bf16", params_dtype=ns.dtypes[tname],
        main_grads_dtype=ns.dtypes["float32"], main_params_dtype=ns.dtypes["float32"],
        accumulate_allreduce_grads_in_fp32=dt != "fp32", use_distributed_optimizer=dist_optim,
        overlap_grad_reduce=dist_optim, overlap_param_gather=dist_optim,
        seq_length=4096, micro_batch_size=1, global_batch_size=128, train_iters=iteration,
        lr=3e-05, min_lr=3e-06, lr_decay_style="cosine", lr_warmup_iters=0, weight_decay=0.1,
        clip_grad=1.0, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-08, optimizer="adam",
        seed=1234, tokenizer_type="HuggingFaceTokenizer",
        tokenizer_model=m.config["_ckptstream_bench_shapes_from"], vocab_size=None,
        padded_vocab_size=m.padded_vocab, save=save_dir, load=None, save_interval=iteration,
        ckpt_format=fmt, ckpt_fully_parallel_save=True, ckpt_assume_constant_structure=False,
        dist_ckpt_strictness="assume_ok_unexpected", async_save=False, no_save_optim=True,
        no_save_rng=True, no_load_optim=False, no_load_rng=False, use_checkpoint_args=False,
        exit_on_missing_checkpoint=False, iteration=iteration,
        consumed_train_samples=iteration * 128, consumed_valid_samples=0,
        skipped_train_samples=0)


def megatron_side(out, m, dt, iteration):
    """latest_checkpointed_iteration.txt (as Megatron writes it: the number, no newline) and
    huggingface/config.json (the model's HF config, for a merge; verl keeps one beside too)."""
    os.makedirs(os.path.join(out, "huggingface"), exist_ok=True)
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))
    config = dict(m.config, torch_dtype=CONFIG_DTYPE[dt])
    with open(os.path.join(out, "huggingface", "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def module_metadata(sd):
    """The `_metadata` nn.Module.state_dict() attaches: {prefix: {"version": 1}} per module."""
    meta = collections.OrderedDict()
    meta[""] = {"version": 1}
    for name in sd:
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            meta.setdefault(".".join(parts[:i]), {"version": 1})
    return meta


def param_buffer(params, esize):
    """Megatron DDP with the distributed optimizer: all parameters of a model chunk are views
    into one buffer (a single storage in torch.save), in reverse order, each start aligned to 64
    elements, buckets of >= 40M elements with their end padded to a multiple of 128 (DP = 1).
    Returns (buffer elements, {key: element offset}, data segments with the padding zeros)."""
    pos = bucket = 0
    offsets, segs = {}, []

    def pad_to(mult):
        nonlocal pos
        end = -(-pos // mult) * mult
        if end > pos:
            segs.append((None, 0, (end - pos) * esize))
        pos = end

    for key, shape, s in reversed(params):
        pad_to(64)
        offsets[key] = pos
        segs.extend(s)
        pos += numel(shape)
        if pos - bucket >= 40_000_000:
            pad_to(128)
            bucket = pos
    pad_to(128)
    return pos, offsets, segs


def write_megatron(out, m, dt, seed, iteration, dist_optim):
    """Legacy Megatron-LM checkpoint (--ckpt-format torch, --no-save-optim --no-save-rng):
    iter_N/mp_rank_TT[_PPP]/model_optim_rng.pt, each a torch.save zip of {args,
    checkpoint_version: 3.0, iteration, model: the stage's state dict (TP-local tensors, local
    layer numbers), num_floating_point_operations_so_far}; storages on cuda:<local rank>."""
    ns = fake_torch()
    tname, skind, esize = DTYPES[dt]
    data = GlobalData(seed)
    rng = random.Random(seed)
    megatron_side(out, m, dt, iteration)
    args = megatron_args(m, dt, "torch", dist_optim, iteration, os.path.abspath(out))
    flops = 6.0 * iteration * 128 * 4096 * (m.layers * 12 * m.h * m.h)
    for p in range(m.pp):
        entries = mcore_stage(m, p)
        for t in range(m.tp):
            t0 = time.time()
            rank = t + m.tp * p  # Megatron's rank order tp-cp-ep-dp-pp, DP = 1
            loc = f"cuda:{rank % 8}"
            sd = collections.OrderedDict()
            params = []
            for e in entries:
                if e.split == "te":
                    sd[e.key] = ns.Tensor(ns.Storage("ByteStorage", 0, 1, content=b""), (0,))
                elif e.split == "none":
                    sd[e.key] = None
                else:
                    chunks = tp_chunks(e.shape, e.split, m.tp, t)
                    segs = [(e.data, o * esize, n * esize) for c in chunks for o, n in c[2]]
                    sd[e.key] = None  # placeholder: keeps the state dict order
                    params.append((e.key, local_shape(chunks), segs))
            if dist_optim:
                total, offsets, segs = param_buffer(params, esize)
                st = ns.Storage(skind, total * esize, esize, source=data.source(segs), location=loc)
                for key, shape, _ in params:
                    sd[key] = ns.Tensor(st, shape, offsets[key])
            else:
                for key, shape, segs in params:
                    sd[key] = ns.Tensor(ns.Storage(skind, numel(shape) * esize, esize,
                                                   source=data.source(segs), location=loc), shape)
            sd._metadata = module_metadata(sd)
            top = {"args": argparse.Namespace(**dict(vars(args), rank=rank)),
                   "checkpoint_version": 3.0, "iteration": iteration, "model": sd,
                   "num_floating_point_operations_so_far": flops}
            pkl, storages = torch_pickle(top, ns)
            rel = os.path.join(f"iter_{iteration:07d}",
                               f"mp_rank_{t:02d}" + (f"_{p:03d}" if m.pp > 1 else ""),
                               "model_optim_rng.pt")
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb", buffering=MIB) as f:
                write_torch_zip(f, "model_optim_rng", pkl, storages, None, rng)
            print(f"  {rel}: {len(params)} tensors in {len(storages)} storages, pickle "
                  f"{len(pkl)} B, {os.path.getsize(path)} B in {time.time() - t0:.1f} s",
                  flush=True)
    return data.bytes


def torch_save_bytes(obj, ns, rng, prefix="archive"):
    """torch.save(obj) into memory (small objects only)."""
    import io
    buf = io.BytesIO()
    pkl, storages = torch_pickle(obj, ns)
    write_torch_zip(buf, prefix, pkl, storages, None, rng)
    return buf.getvalue()


def write_megatron_dist(out, m, dt, seed, iteration, dist_optim):
    """Megatron-core dist_ckpt, torch_dist backend (core <= v0.18: common.pt beside), as
    dist_checkpointing.save with TorchDistSaveShardedStrategy (thread_count 1, main replicas
    only) writes it: iter_N/{common.pt, __R_0.distcp, .metadata, metadata.json}. Keys are the
    global sharded keys: layers stacked ([L, ...], one chunk per layer and TP rank, at the global
    layer), fc1 = [gate; up] of two chunks per rank, replicated tensors written by TP rank 0,
    TE _extra_state as byte items `<key>/shard_<layer>_<L>` (torch.save([obj]))."""
    ns = fake_torch()
    k = dcp_classes()
    mk = megatron_classes()
    tname, skind, esize = DTYPES[dt]
    data = GlobalData(seed)
    rng = random.Random(seed)
    megatron_side(out, m, dt, iteration)
    d = os.path.join(out, f"iter_{iteration:07d}")
    os.makedirs(d, exist_ok=True)
    args = megatron_args(m, dt, "torch_dist", dist_optim, iteration, os.path.abspath(out))
    content = {}
    if dist_optim:
        content["distrib_optim_sharding_type"] = "dp_reshardable"
    content.update(singleton_local_shards=False, chained_optim_avoid_prefix=True)
    common = {"args": args, "checkpoint_version": 3.0, "iteration": iteration,
              "num_floating_point_operations_so_far":
                  6.0 * iteration * 128 * 4096 * (m.layers * 12 * m.h * m.h),
              "content_metadata": content}
    with open(os.path.join(d, "common.pt"), "wb") as f:
        f.write(torch_save_bytes(common, ns, rng, "common"))
    L = m.layers
    sdm, storage, plans = {}, {}, []
    for p in range(m.pp):
        entries = mcore_stage(m, p)
        for t in range(m.tp):
            t0 = time.time()
            r = t + m.tp * p
            groups = collections.OrderedDict()  # key -> items, keys in order of first sight
            for e in entries:
                if e.split in ("te", "none"):
                    if t:
                        continue  # replica_id (0, tp, dp): TP rank 0's copy is the main one
                    off, shp = ((e.layer,), (L,)) if e.layer is not None else ((0,), (1,))
                    key = f"{e.dist}/shard_{'.'.join(map(str, off))}_{'.'.join(map(str, shp))}"
                    groups[key] = [("bytes", e.split)]
                    continue
                if e.split == "rep" and t:
                    continue
                gshape = e.shape if e.layer is None else (L,) + e.shape
                for offs, sizes, segs in tp_chunks(e.shape, e.split, m.tp, t):
                    if e.layer is not None:
                        offs, sizes = (e.layer,) + offs, (1,) + sizes
                    groups.setdefault(e.dist, []).append(
                        ("tensor", gshape, offs, sizes,
                         [(e.data, o * esize, n * esize) for o, n in segs]))
            items = []
            for key, its in groups.items():
                for it in its:
                    if it[0] == "bytes":
                        sdm[key] = mk.BytesStorageMetadata()
                        items.append(mk.WriteItem(k.MetadataIndex(key), mk.WriteItemType.BYTE_IO))
                        continue
                    _, gshape, offs, sizes, _ = it
                    if key not in sdm:
                        sdm[key] = k.TensorStorageMetadata(
                            k.TensorProperties(ns.dtypes[tname]), ns.Size(gshape), [])
                    chunk = k.ChunkStorageMetadata(ns.Size(offs), ns.Size(sizes))
                    sdm[key].chunks.append(chunk)
                    items.append(mk.WriteItem(
                        k.MetadataIndex(key, offs), mk.WriteItemType.SHARD,
                        mk.TensorWriteData(chunk, k.TensorProperties(ns.dtypes[tname]),
                                           ns.Size(gshape))))
            plans.append(mk.SavePlan(items, None, {}))
            rel = f"__{r}_0.distcp"
            ordered = ([(key, it) for key, its in groups.items() for it in its if it[0] == "bytes"]
                       + [(key, it) for key, its in groups.items() for it in its
                          if it[0] == "tensor"])  # byte items first, then tensors
            with open(os.path.join(d, rel), "wb", buffering=MIB) as f:
                for key, it in ordered:
                    at = f.tell()
                    if it[0] == "bytes":
                        obj = None if it[1] == "none" else ns.Tensor(
                            ns.Storage("ByteStorage", 0, 1, content=b""), (0,))
                        f.write(torch_save_bytes([obj], ns, rng))
                        storage[k.MetadataIndex(key)] = k._StorageInfo(rel, at, f.tell() - at)
                        continue
                    _, gshape, offs, sizes, segs = it
                    st = ns.Storage(skind, numel(sizes) * esize, esize, source=data.source(segs))
                    pkl, storages = torch_pickle(ns.Tensor(st, sizes), ns)
                    write_torch_zip(f, "archive", pkl, storages, None, rng)
                    storage[k.MetadataIndex(key, offs)] = k._StorageInfo(rel, at, f.tell() - at)
            print(f"  {rel}: {len(items)} items, {os.path.getsize(os.path.join(d, rel))} B "
                  f"in {time.time() - t0:.1f} s", flush=True)
    md = k.Metadata(sdm, None, storage, k.StorageMeta(os.path.abspath(d), str(uuid.uuid4())))
    md.all_local_plans = plans
    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(md, f, protocol=4)
    with open(os.path.join(d, "metadata.json"), "w") as f:  # last, as Megatron's finalize step
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1}, f)
    return data.bytes


# ---------------------------------------------------------------------------------------------
# Megatron-core MoE models, torch_dist (docs/formats/megatron.md §1.4): per-layer keys (a dense
# first layer makes megatron-core's layers non-homogeneous), experts along a prepended expert axis
# ("decoder.layers.{l}.mlp.experts.experts.linear_fc1.weight" [E, 2F, H]), one chunk per expert
# ([1, F, H] gate and up halves of fc1 as SwiGLU's sharded factory saves them, [1, H, F] fc2),
# written by its expert-parallel rank; everything else by EP rank 0; TP 1. MTP layers under
# mtp.layers.{k}.mtp_model_layer. No common.pt: as megatron-core >= 0.19 with no args kept.

def mcore_moe_deepseek(layers=61, mtp=1):
    """DeepSeek-V3 (671B) as megatron-core's MLA + MoE GPT model names it."""
    h, v, dense, experts, moe_i, dense_i = 7168, 129280, 3, 256, 2048, 18432
    q_lora, kv_lora, heads, nope, rope, vdim = 1536, 512, 128, 128, 64, 128
    config = dict(deepseek_v3(layers)[0], num_nextn_predict_layers=mtp)

    def layer(p, moe):
        t = [(p + "input_layernorm.weight", (h,), "full"),
             (p + "self_attention.linear_q_down_proj.weight", (q_lora, h), "full"),
             (p + "self_attention.linear_q_up_proj.layer_norm_weight", (q_lora,), "full"),
             (p + "self_attention.linear_q_up_proj.weight", (heads * (nope + rope), q_lora), "full"),
             (p + "self_attention.linear_kv_down_proj.weight", (kv_lora + rope, h), "full"),
             (p + "self_attention.linear_kv_up_proj.layer_norm_weight", (kv_lora,), "full"),
             (p + "self_attention.linear_kv_up_proj.weight", (heads * (nope + vdim), kv_lora), "full"),
             (p + "self_attention.linear_proj.weight", (h, heads * vdim), "full")]
        if not moe:
            return t + [(p + "mlp.linear_fc1.layer_norm_weight", (h,), "full"),
                        (p + "mlp.linear_fc1.weight", (2 * dense_i, h), "glu"),
                        (p + "mlp.linear_fc2.weight", (h, dense_i), "full")]
        return t + [(p + "pre_mlp_layernorm.weight", (h,), "full"),
                    (p + "mlp.router.weight", (experts, h), "full"),
                    (p + "mlp.router.expert_bias", (experts,), "fp32"),
                    (p + "mlp.experts.experts.linear_fc1.weight", (experts, 2 * moe_i, h), "experts-glu"),
                    (p + "mlp.experts.experts.linear_fc2.weight", (experts, h, moe_i), "experts"),
                    (p + "mlp.shared_experts.linear_fc1.weight", (2 * moe_i, h), "glu"),
                    (p + "mlp.shared_experts.linear_fc2.weight", (h, moe_i), "full")]

    t = [("embedding.word_embeddings.weight", (v, h), "full")]
    for n in range(layers):
        t += layer(f"decoder.layers.{n}.", n >= dense)
    t += [("decoder.final_layernorm.weight", (h,), "full"), ("output_layer.weight", (v, h), "full")]
    for k in range(mtp):
        p = f"mtp.layers.{k}."
        t += [(p + "enorm.weight", (h,), "full"), (p + "hnorm.weight", (h,), "full"),
              (p + "eh_proj.weight", (h, 2 * h), "full")]
        t += layer(p + "mtp_model_layer.", True)
        t += [(p + "final_layernorm.weight", (h,), "full")]
    return config, t


def mcore_moe_qwen3(size_bytes, esize):
    """A Qwen3-MoE (30B-A3B layout: 128 experts of 768, hidden 2048, 32/4 heads of 128) with as
    many layers as make `size_bytes`, vocab 151936; below one such layer, fewer experts (a power
    of two, at least 8) in one layer."""
    h, v, experts, moe_i, heads, kv, d = 2048, 151936, 128, 768, 32, 4, 128

    def layer_bytes(e):
        return (h * (heads + 2 * kv) * d + h * heads * d + 2 * d + 2 * h + e * h
                + e * 3 * moe_i * h) * esize

    budget = size_bytes - 2 * v * h * esize
    while experts > 8 and layer_bytes(experts) > budget:
        experts //= 2
    layers = max(1, round(budget / layer_bytes(experts)))
    config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
              "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "head_dim": d, "num_experts": experts,
              "num_experts_per_tok": 8, "moe_intermediate_size": moe_i, "intermediate_size": 6144,
              "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": v,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-06,
              "rope_theta": 1000000.0, "max_position_embeddings": 40960}
    t = [("embedding.word_embeddings.weight", (v, h), "full")]
    for n in range(layers):
        p = f"decoder.layers.{n}."
        t += [(p + "self_attention.linear_qkv.layer_norm_weight", (h,), "full"),
              (p + "self_attention.linear_qkv.weight", ((heads + 2 * kv) * d, h), "full"),
              (p + "self_attention.q_layernorm.weight", (d,), "full"),
              (p + "self_attention.k_layernorm.weight", (d,), "full"),
              (p + "self_attention.linear_proj.weight", (h, heads * d), "full"),
              (p + "pre_mlp_layernorm.weight", (h,), "full"),
              (p + "mlp.router.weight", (experts, h), "full"),
              (p + "mlp.experts.experts.linear_fc1.weight", (experts, 2 * moe_i, h), "experts-glu"),
              (p + "mlp.experts.experts.linear_fc2.weight", (experts, h, moe_i), "experts")]
    t += [("decoder.final_layernorm.weight", (h,), "full"), ("output_layer.weight", (v, h), "full")]
    return config, t


def write_megatron_moe_dist(out, config, entries, ep, seed, sparse, iteration=100):
    ns = fake_torch()
    k = dcp_classes()
    mk = megatron_classes()
    tname, skind, esize = DTYPES["bf16"]
    os.makedirs(os.path.join(out, "huggingface"), exist_ok=True)
    with open(os.path.join(out, "huggingface", "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))
    d = os.path.join(out, f"iter_{iteration:07d}")
    os.makedirs(d, exist_ok=True)
    filler = Filler(seed, sparse)
    rng = random.Random(seed)
    sdm, storage = {}, {}
    per_rank = [[] for _ in range(ep)]  # (key, offsets, sizes, dtype) in write order
    for key, shape, rule in entries:
        dt = "float32" if rule == "fp32" else tname
        sdm[key] = k.TensorStorageMetadata(k.TensorProperties(ns.dtypes[dt]), ns.Size(shape), [])
        zero = (0,) * len(shape)
        if rule in ("full", "fp32"):
            per_rank[0].append((key, zero, shape, dt))
        elif rule == "glu":  # [gate; up] as two chunks (TP 1)
            half = shape[0] // 2
            for o in (0, half):
                per_rank[0].append((key, (o,) + zero[1:], (half,) + shape[1:], dt))
        else:
            experts = shape[0]
            if experts % ep:
                raise SystemExit(f"{key}: {experts} experts do not split over EP {ep}")
            for e in range(experts):
                r = e // (experts // ep)
                if rule == "experts-glu":
                    half = shape[1] // 2
                    for o in (0, half):
                        per_rank[r].append((key, (e, o, 0), (1, half, shape[2]), dt))
                else:
                    per_rank[r].append((key, (e, 0, 0), (1,) + shape[1:], dt))
    for r, chunks in enumerate(per_rank):
        t0 = time.time()
        rel = f"__{r}_0.distcp"
        with open(os.path.join(d, rel), "wb", buffering=MIB) as f:
            for key, offs, sizes, dt in chunks:
                es = 4 if dt == "float32" else esize
                sk = "FloatStorage" if dt == "float32" else skind
                st = ns.Storage(sk, es * numel(sizes), es)
                pkl, storages = torch_pickle(ns.Tensor(st, sizes), ns)
                at = f.tell()
                write_torch_zip(f, "archive", pkl, storages, filler, rng)
                sdm[key].chunks.append(k.ChunkStorageMetadata(ns.Size(offs), ns.Size(sizes)))
                storage[k.MetadataIndex(key, offs)] = k._StorageInfo(rel, at, f.tell() - at)
            f.truncate()
        print(f"  {rel}: {len(chunks)} chunks, {os.path.getsize(os.path.join(d, rel))} B "
              f"in {time.time() - t0:.1f} s", flush=True)
    md = k.Metadata(sdm, None, storage, k.StorageMeta(os.path.abspath(d), str(uuid.uuid4())))
    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(md, f, protocol=4)
    with open(os.path.join(d, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1}, f)
    return filler.bytes


def parse_size(s):
    m = re.fullmatch(r"([0-9.]+)\s*([KMGT]i?B?|B)?", s.strip(), re.I)
    if not m:
        raise SystemExit(f"bad size {s!r}")
    unit = (m.group(2) or "B").upper().rstrip("B")
    mult = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 1024, "MI": MIB,
            "GI": 1 << 30, "TI": 1 << 40}[unit]
    return int(float(m.group(1)) * mult)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layout", choices=["fsdp", "dcp", "deepseek", "megatron", "megatron-dist",
                                       "megatron-moe", "megatron-deepseek", "deepseek-hf"])
    ap.add_argument("--ep", type=int, default=8, help="megatron-moe/-deepseek: expert-parallel size")
    ap.add_argument("out")
    ap.add_argument("--size", default="1GB", help="tensor bytes (decimal GB, or GiB)")
    ap.add_argument("--world-size", type=int, default=None)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--config-dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="torch_dtype of config.json (default: --dtype; bf16 with fp32 data "
                         "makes `merge --dtype auto` cast, as for a verl fp32 actor)")
    ap.add_argument("--layout-of-deepseek", dest="ds_layout", choices=["fsdp", "dcp"],
                    default="fsdp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=None,
                    help="deepseek: fewer layers (for profiling the planner)")
    ap.add_argument("--tp", type=int, default=1, help="megatron: tensor-parallel size")
    ap.add_argument("--pp", type=int, default=1, help="megatron: pipeline-parallel size")
    ap.add_argument("--iteration", type=int, default=100, help="megatron: iteration (iter_N)")
    ap.add_argument("--dist-optim", action="store_true",
                    help="megatron: saved with the distributed optimizer (legacy files: each "
                         "stage's parameters are views into one DDP buffer storage)")
    ap.add_argument("--no-fp8", dest="fp8", action="store_false",
                    help="deepseek-hf: bf16 weights instead of the published FP8 ones")
    a = ap.parse_args(argv)
    t0 = time.time()
    if os.path.exists(a.out) and os.listdir(a.out):
        raise SystemExit(f"{a.out} exists and is not empty")
    if a.layout == "deepseek-hf":
        total, n_files, quantized = write_deepseek_hf(a.out, a.layers or 61, a.fp8)
        print(f"done: {total} tensor bytes declared (holes) in {n_files} files, {quantized} "
              f"FP8 weights, in {time.time() - t0:.1f} s")
        return 0
    if a.layout in ("megatron-moe", "megatron-deepseek"):
        if a.layout == "megatron-deepseek":
            config, entries = mcore_moe_deepseek(a.layers or 61)
            sparse = True
        else:
            config, entries = mcore_moe_qwen3(parse_size(a.size), DTYPES["bf16"][2])
            sparse = False
        declared = sum(numel(s) * (4 if r == "fp32" else 2) for _, s, r in entries)
        print(f"{a.layout}: {len(entries)} keys, {config['num_hidden_layers']} layers, "
              f"{declared} tensor bytes, EP={a.ep} -> {a.out}", flush=True)
        n = write_megatron_moe_dist(a.out, config, entries, a.ep, a.seed, sparse, a.iteration)
        print(f"done: {n} data bytes{' (holes)' if sparse else ''} in {time.time() - t0:.1f} s")
        return 0
    if a.layout.startswith("megatron"):
        if a.tp < 1 or a.pp < 1:
            raise SystemExit("--tp and --pp must be >= 1")
        esize = DTYPES[a.dtype][2]
        m = megatron_model(parse_size(a.size), esize, a.tp, a.pp)
        declared = sum(numel(e.shape) * esize for p in range(a.pp) for e in mcore_stage(m, p)
                       if e.shape is not None)
        print(f"{a.layout}: {m.name} shapes, {m.layers} layers, hidden {m.h}, ffn {m.ffn}, "
              f"heads {m.heads}/{m.groups}, vocab {m.vocab} (padded {m.padded_vocab}), "
              f"{declared} tensor bytes, TP={a.tp} PP={a.pp}, {a.dtype} -> {a.out}", flush=True)
        write = write_megatron if a.layout == "megatron" else write_megatron_dist
        n = write(a.out, m, a.dtype, a.seed, a.iteration, a.dist_optim)
        print(f"done: {n} data bytes in {time.time() - t0:.1f} s")
        return 0
    if a.layout == "deepseek":
        config, tensors = deepseek_v3(a.layers or 61)
        w = a.world_size or 16
        dt = "bf16"
        sparse = True
        layout = a.ds_layout
    else:
        esize = DTYPES[a.dtype][2]
        config, tensors = qwen_model(parse_size(a.size), esize)
        config["torch_dtype"] = CONFIG_DTYPE[a.config_dtype or a.dtype]
        w = a.world_size or 8
        dt = a.dtype
        sparse = False
        layout = a.layout
    declared = sum(numel(t[1]) * (4 if (len(t) == 3 and t[2] == "buffer") else DTYPES[dt][2])
                   for t in tensors)
    print(f"{a.layout}: {len(tensors)} tensors, {declared} tensor bytes, W={w}, {dt}, "
          f"{config.get('num_hidden_layers')} layers -> {a.out}", flush=True)
    if layout == "fsdp":
        n = write_fsdp(a.out, tensors, config, w, dt, a.seed, sparse)
    else:
        n = write_dcp(a.out, tensors, config, w, dt, a.seed, sparse)
    print(f"done: {n} data bytes{' (holes)' if sparse else ''} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
