#!/usr/bin/env python3
"""Writes torch checkpoints for the interop tests (run under the oracle: real torch).

    python3 make_cases.py OUTDIR CASE...      (CASE "all" = every case)

Each case is a file OUTDIR/<case>.pt, or a directory OUTDIR/<case>/ for the directory cases.
The checks (check_output.py) reload these files with torch.load, so nothing else is recorded.
"""
import collections
import json
import os
import sys

import torch

GEN = torch.Generator().manual_seed(1234)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN).to(dtype)


def randint(lo, hi, *shape, dtype):
    return torch.randint(lo, hi, shape, generator=GEN, dtype=torch.int64).to(dtype)


def edge_floats():
    """Values where casting rules matter: NaN, infinities, subnormals, rounding ties."""
    f32 = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"),
                        1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, 65504.0, 65520.0, 1e-8,
                        6e-8],
                       dtype=torch.float32)
    # bf16 ties: low 16 bits exactly 0x8000 with even and odd kept mantissa, and just around it.
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF,
                         0x7FC00001, 0xFFC12345, 0x00008000, 0x00018000],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([f32, bits])


def case_dtypes(out):
    """Every dtype that safetensors 0.4 (the oracle's reference writer) knows, several shapes."""
    sd = collections.OrderedDict()
    sd["f32"] = randn(5, 7)
    sd["f32_edge"] = edge_floats()
    sd["f64"] = randn(3, 4, dtype=torch.float64)
    sd["f64_edge"] = edge_floats().to(torch.float64)
    sd["f16"] = randn(6, 2, dtype=torch.float16)
    sd["bf16"] = randn(4, 9, dtype=torch.bfloat16)
    sd["i64"] = randint(-2**40, 2**40, 7, dtype=torch.int64)
    sd["i32"] = randint(-2**31, 2**31 - 1, 2, 3, dtype=torch.int32)
    sd["i16"] = randint(-2**15, 2**15 - 1, 11, dtype=torch.int16)
    sd["i8"] = randint(-128, 127, 13, dtype=torch.int8)
    sd["u8"] = randint(0, 255, 3, 5, dtype=torch.uint8)
    sd["bool"] = randint(0, 2, 17, dtype=torch.bool)
    sd["f8_e4m3fn"] = randn(4, 4).to(torch.float8_e4m3fn)
    sd["f8_e5m2"] = randn(3, 5).to(torch.float8_e5m2)
    sd["scalar_f32"] = torch.tensor(3.5)
    sd["scalar_i64"] = torch.tensor(-7)
    sd["empty_f32"] = torch.empty(0, 3)
    sd["empty_i32"] = torch.empty(4, 0, dtype=torch.int32)
    sd["odd_u8"] = randint(0, 255, 3, dtype=torch.uint8)  # odd byte count before aligned data
    sd["big_f32"] = randn(300, 257)
    torch.save(sd, os.path.join(out, "dtypes.pt"))


def case_dtypes_extra(out):
    """dtypes safetensors supports but the oracle's safetensors 0.4 Python binding cannot load."""
    sd = collections.OrderedDict()
    sd["u16"] = randint(0, 2**16 - 1, 9, dtype=torch.uint16)
    sd["u32"] = randint(0, 2**32 - 1, 3, 3, dtype=torch.uint32)
    sd["u64"] = randint(0, 2**62, 5, dtype=torch.uint64)
    sd["c64"] = torch.complex(randn(4), randn(4))
    sd["f8_e4m3fnuz"] = randn(6).to(torch.float8_e4m3fnuz)
    sd["f8_e5m2fnuz"] = randn(6).to(torch.float8_e5m2fnuz)
    sd["f32"] = randn(2, 2)
    torch.save(sd, os.path.join(out, "dtypes_extra.pt"))


def views_dict():
    base = randn(6, 8)
    big = randn(1000)
    sd = collections.OrderedDict()
    sd["base"] = base
    sd["transposed"] = base.t()                         # strides (1, 8)
    sd["rows_2_4"] = base[2:4]                          # storage offset 16, contiguous
    sd["column_3"] = base[:, 3]                         # offset 3, stride 8
    sd["every_other"] = base[::2, 1::3]                 # offset 1, strides (16, 3)
    sd["small_of_big"] = big[100:110].view(2, 5)        # storage much larger than the view
    sd["expanded"] = randn(1, 5).expand(4, 5)           # stride 0
    sd["permuted"] = randn(2, 3, 4).permute(2, 0, 1)    # 3-d non-contiguous
    sd["i16_t"] = randint(-100, 100, 4, 6, dtype=torch.int16).t()
    sd["bf16_slice"] = randn(10, 10, dtype=torch.bfloat16)[3:7, 2:9]
    return sd


def case_views(out):
    torch.save(views_dict(), os.path.join(out, "views.pt"))


def case_shared(out):
    """Aliases (same storage, same view) and different views of one storage."""
    w = randn(16, 8)
    storage_owner = randn(64)
    sd = collections.OrderedDict()
    sd["encoder.weight"] = w
    sd["decoder.weight"] = w                            # alias: written once
    sd["first_half"] = storage_owner[:32].view(4, 8)    # two views of one storage,
    sd["second_half"] = storage_owner[32:].view(4, 8)   # written as separate copies
    sd["whole"] = storage_owner
    sd["whole_2d"] = storage_owner.view(8, 8)           # same storage, different shape: a copy
    torch.save(sd, os.path.join(out, "shared.pt"))


def case_tied(out):
    """Tied embeddings the way transformers' state_dict() has them."""
    embed = randn(32, 8)
    sd = collections.OrderedDict()
    sd["model.embed_tokens.weight"] = embed
    sd["model.norm.weight"] = randn(8)
    sd["lm_head.weight"] = embed
    torch.save(sd, os.path.join(out, "tied.pt"))


def case_parameter(out):
    """nn.Parameter values and a real module state_dict (OrderedDict with _metadata)."""
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 3, bias=False))
    model.register_buffer("step_count", torch.tensor([5], dtype=torch.int64))
    torch.save(model.state_dict(), os.path.join(out, "module_state_dict.pt"))
    params = collections.OrderedDict()
    params["p"] = torch.nn.Parameter(randn(3, 3))
    params["frozen"] = torch.nn.Parameter(randn(2), requires_grad=False)
    params["plain"] = randn(4)
    torch.save(params, os.path.join(out, "parameter.pt"))


def case_nested(out):
    """Nested dicts, OrderedDicts and lists flatten to dotted names."""
    obj = {
        "model": collections.OrderedDict([
            ("layers", {"0": {"weight": randn(2, 2), "bias": randn(2)},
                        "1": {"weight": randn(2, 2), "bias": randn(2)}}),
            ("norm", collections.OrderedDict(weight=randn(2))),
        ]),
        "heads": [randn(3), randn(4, dtype=torch.float16)],
    }
    torch.save(obj, os.path.join(out, "nested.pt"))
    # A training checkpoint: tensors next to plain Python values, which carry no tensor data.
    obj = {"model": {"w": randn(3, 2), "b": randn(3)}, "epoch": 3, "lr": 1e-4, "name": "run-1",
           "flags": [True, None]}
    torch.save(obj, os.path.join(out, "nested_scalars.pt"))


def case_legacy(out):
    """The pre-1.6 (non-zip) format, with views and shared storages, and pickle protocol 4."""
    sd = views_dict()
    sd["i64"] = randint(-5, 5, 7, dtype=torch.int64)
    sd["bool"] = randint(0, 2, 5, dtype=torch.bool)
    sd["f16"] = randn(3, 3, dtype=torch.float16)
    torch.save(sd, os.path.join(out, "legacy.pt"), _use_new_zipfile_serialization=False)
    small = collections.OrderedDict(a=randn(4), b=randint(0, 9, 3, dtype=torch.int32))
    torch.save(small, os.path.join(out, "legacy_p4.pt"), _use_new_zipfile_serialization=False,
               pickle_protocol=4)


def case_protocols(out):
    """torch.save with pickle protocols 1..5 (protocol 0 cannot write torch's persistent ids)."""
    for proto in (1, 2, 3, 4, 5):
        sd = collections.OrderedDict()
        sd["weight"] = randn(4, 3)
        sd["view"] = sd["weight"][1:, :2]
        sd["ids"] = randint(0, 100, 6, dtype=torch.int64)
        sd["half"] = randn(5, dtype=torch.bfloat16)
        sd["nested"] = {"deep": {"x": randn(2)}}
        torch.save(sd, os.path.join(out, f"proto{proto}.pt"), pickle_protocol=proto)


def case_zip64(out):
    """Enough records (> 65535) that the zip central directory needs zip64 records."""
    sd = collections.OrderedDict()
    for i in range(70000):
        sd[f"t{i}"] = torch.tensor([float(i)], dtype=torch.float32)
    torch.save(sd, os.path.join(out, "zip64.pt"))


def case_shardme(out):
    """Tensors of varied sizes for --max-shard-size tests (distinct storages)."""
    sd = collections.OrderedDict()
    sizes = [(40, 25), (10,), (100, 30), (5, 5), (250, 10), (3,), (60, 60), (7, 9), (1,), (20, 20)]
    for i, shape in enumerate(sizes):
        sd[f"layer.{i}.weight"] = randn(*shape)
    sd["ids"] = randint(0, 1000, 50, dtype=torch.int64)
    torch.save(sd, os.path.join(out, "shardme.pt"))


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def case_hf_sharded(out):
    """A Hugging Face sharded checkpoint: pytorch_model-0000i-of-00003.bin + index + side files."""
    d = os.path.join(out, "hf_sharded")
    os.makedirs(d, exist_ok=True)
    embed = randn(64, 16)
    shards = [
        collections.OrderedDict([("model.embed_tokens.weight", embed),
                                 ("model.layers.0.self_attn.q_proj.weight", randn(16, 16)),
                                 ("model.layers.0.self_attn.q_proj.bias", randn(16))]),
        collections.OrderedDict([("model.layers.0.mlp.up_proj.weight", randn(32, 16)),
                                 ("model.layers.0.mlp.down_proj.weight", randn(16, 32)),
                                 ("model.layers.0.input_layernorm.weight", randn(16))]),
        collections.OrderedDict([("model.norm.weight", randn(16)),
                                 ("lm_head.weight", randn(64, 16))]),
    ]
    weight_map = {}
    total = 0
    for i, sd in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(sd, os.path.join(d, name))
        for k, v in sd.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    write_json(os.path.join(d, "pytorch_model.bin.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(d, "config.json"),
               {"model_type": "llama", "hidden_size": 16, "torch_dtype": "float32",
                "tie_word_embeddings": False, "vocab_size": 64})
    write_json(os.path.join(d, "generation_config.json"), {"do_sample": False, "eos_token_id": 2})
    write_json(os.path.join(d, "special_tokens_map.json"), {"eos_token": "</s>"})
    write_json(os.path.join(d, "tokenizer_config.json"), {"model_max_length": 128})
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}\n')
    with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write("{% for m in messages %}{{ m['content'] }}{% endfor %}\n")
    # A dtype-auto case: the same weights, but config.json asks for float16.
    d16 = os.path.join(out, "hf_single_fp16cfg")
    os.makedirs(d16, exist_ok=True)
    torch.save(shards[1], os.path.join(d16, "pytorch_model.bin"))
    write_json(os.path.join(d16, "config.json"), {"model_type": "llama", "torch_dtype": "float16"})


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def main(argv):
    if len(argv) < 3:
        print(f"usage: {argv[0]} OUTDIR CASE... (cases: all {' '.join(CASES)})", file=sys.stderr)
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    names = list(CASES) if argv[2:] == ["all"] else argv[2:]
    for name in names:
        if name not in CASES:
            print(f"unknown case {name}", file=sys.stderr)
            return 2
        CASES[name](out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
