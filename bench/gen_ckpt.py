#!/usr/bin/env python3
"""Synthetic sharded checkpoints for the benchmarks, written without torch (Python 3 stdlib only).

    gen_ckpt.py fsdp OUT --size 5GB [--world-size 8] [--dtype bf16|fp32] [--seed 0]
    gen_ckpt.py dcp  OUT --size 5GB [--world-size 8] [--dtype bf16|fp32]
    gen_ckpt.py deepseek OUT [--world-size 16] [--layout fsdp]     (~1.34 TB declared, sparse)

fsdp: a verl FSDP2 actor directory (../shared/docs/formats/verl.md §1):
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

Sizes: a Qwen2.5 config (0.5B/1.5B/3B/7B/14B/32B shapes: hidden, intermediate, heads, vocab) is
picked by the requested size and its layer count scaled so the tensor bytes match it (+-1 layer).
Data are pseudo-random bytes (slices at random offsets of a 64 MiB os.urandom pool: fast,
incompressible), written in 8 MiB blocks, never a whole file in memory. Deterministic per --seed
apart from the pool (os.urandom).
"""
import argparse
import collections
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
import zlib

MIB = 1 << 20
U32MAX = 0xFFFFFFFF
ALIGN = 64
DTYPES = {  # name: (torch dtype name, storage class, element size)
    "bf16": ("bfloat16", "BFloat16Storage", 2),
    "fp16": ("float16", "HalfStorage", 2),
    "fp32": ("float32", "FloatStorage", 4),
    "int32": ("int32", "IntStorage", 4),
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
    config = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": h,
        "initializer_range": 0.02, "intermediate_size": i, "max_position_embeddings": 32768,
        "max_window_layers": layers, "model_type": "qwen2", "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "transformers_version": "4.51.3", "use_cache": True, "use_sliding_window": False,
        "vocab_size": v, "_ckptstream_bench_shapes_from": name,
    }
    return config, tensors


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


def fake_torch():
    if "_ckptstream_fake" in globals():
        return globals()["_ckptstream_fake"]

    def module(name):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        return sys.modules[name]

    def put(mod, obj, name=None):
        name = name or obj.__name__
        obj.__module__ = mod.__name__
        obj.__qualname__ = name
        obj.__name__ = name
        setattr(mod, name, obj)
        return obj

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
    for name in ("float32", "bfloat16", "float16", "int32", "int64"):
        d = dtype(name)
        setattr(torch, name, d)
        ns.dtypes[name] = d

    ns.storage = {}
    for n in ("FloatStorage", "BFloat16Storage", "HalfStorage", "IntStorage"):
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
        """A storage: pickled as a persistent id ('storage', cls, key, 'cpu', numel)."""
        def __init__(self, kind, nbytes, esize, content=None):
            self.kind, self.nbytes, self.esize, self.content = kind, nbytes, esize, content
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
            return ("storage", self.ns.storage[obj.kind], obj.key, "cpu", obj.nbytes // obj.esize)
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

    def add(self, name, data=None, size=None):
        """A record of bytes `data`, or of `size` filler bytes."""
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

    def module(name):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        return sys.modules[name]

    def put(mod, obj, name=None):
        name = name or obj.__name__
        obj.__module__ = mod.__name__
        obj.__qualname__ = name
        setattr(mod, name, obj)
        return obj

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
    ap.add_argument("layout", choices=["fsdp", "dcp", "deepseek"])
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
    a = ap.parse_args(argv)
    t0 = time.time()
    if os.path.exists(a.out) and os.listdir(a.out):
        raise SystemExit(f"{a.out} exists and is not empty")
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
