#!/usr/bin/env python3
"""Referee for `ckptstream convert`: reloads the torch sources with real torch and checks the
safetensors output against them (run under the oracle).

    python3 check_output.py --out OUT [--dtype keep|bf16|fp16|fp32] [--max-shard-size BYTES]
                            [--side-files] SRC...

SRC: the torch files or directories given to `ckptstream convert`. Checks:
  * the set of output tensors = the dotted names of every tensor in the sources, with aliases
    (same storage and same view) written once and lm_head.weight dropped when tied;
  * every tensor reads back (safetensors.torch.load_file) bit for bit equal to what torch saved,
    cast with torch's .to() for --dtype (floating dtypes only, float8 excluded);
  * every output file is byte-identical to safetensors.torch.save_file of the same tensors with
    metadata {"format": "pt"} (for dtypes the oracle's safetensors lacks, the header rules of the
    reference writer are checked instead and the data bytes compared);
  * sharding follows huggingface_hub's greedy rule, file names and index are consistent;
  * ckptstream.manifest.json lists every file and tensor; side files are copied byte for byte.
Prints one line per failure and exits 1 if there was any.
"""
import argparse
import filecmp
import json
import os
import re
import struct
import sys
import tempfile

import torch

# safetensors dtype codes in the reference writer's enum (= alignment) order.
ST_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
            "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
            "F64", "I64", "U64"]
TORCH_TO_ST = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ", torch.int16: "I16", torch.uint16: "U16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32",
    torch.float32: "F32", torch.complex64: "C64", torch.float64: "F64", torch.int64: "I64",
    torch.uint64: "U64",
}
if hasattr(torch, "float8_e8m0fnu"):
    TORCH_TO_ST[torch.float8_e8m0fnu] = "F8_E8M0"
FLOAT8 = {d for d, code in TORCH_TO_ST.items() if code.startswith("F8_")}
CAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              "merges.txt", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
TORCH_EXT = (".bin", ".pt", ".pth")
SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", flush=True)


# ---------------------------------------------------------------- expected tensors (from torch)

def torch_files(src):
    if os.path.isfile(src):
        return [src]
    index = os.path.join(src, "pytorch_model.bin.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(src, n) for n in names]
    return [os.path.join(src, n) for n in sorted(os.listdir(src)) if n.endswith(TORCH_EXT)]


def flatten(obj, prefix, out):
    if isinstance(obj, torch.Tensor):
        out.append((prefix, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)
    # other values (ints, strings, None) carry no tensor data


def view_key(t):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def expected_tensors(sources, dtype):
    """[(name, tensor)] in state-dict order, aliases removed, cast as --dtype asks."""
    items = []
    for src in sources:
        for path in torch_files(src):
            flatten(torch.load(path, map_location="cpu", weights_only=False), "", items)
    groups = {}
    for name, t in items:
        groups.setdefault(view_key(t), []).append(name)
    alias_groups = [names for names in groups.values() if len(names) > 1]
    out = []
    for name, t in items:
        t = t.detach()
        if dtype in CAST and t.is_floating_point() and t.dtype not in FLOAT8:
            t = t.to(CAST[dtype])
        out.append((name, t.contiguous().clone()))
    return out, alias_groups


def raw_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------- safetensors parsing (strict)

def parse_safetensors(path):
    """Header entries as {name: (dtype, shape, begin, end)}, metadata, data start; checks the
    reference reader's validation rules and the reference writer's layout."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            fail(f"{path}: shorter than 8 bytes")
            return None
        n = struct.unpack("<Q", head)[0]
        if n > 100_000_000 or 8 + n > size:
            fail(f"{path}: header length {n} invalid for a file of {size} bytes")
            return None
        raw = f.read(n)
    if n % 8 != 0:
        fail(f"{path}: header length {n} is not a multiple of 8")
    text = raw.decode("utf-8")
    stripped = text.rstrip(" ")
    if stripped != text and len(text) - len(stripped) >= 8:
        fail(f"{path}: header padded with {len(text) - len(stripped)} spaces (reference: < 8)")
    header = json.loads(text)
    metadata = header.pop("__metadata__", None)
    entries = {}
    for name, e in header.items():
        entries[name] = (e["dtype"], e["shape"], e["data_offsets"][0], e["data_offsets"][1])
    pos = 0
    for name, (dt, shape, b, e) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if b != pos or e < b:
            fail(f"{path}: tensor {name} has data_offsets [{b}, {e}], expected to start at {pos}")
        pos = e
    if 8 + n + pos != size:
        fail(f"{path}: file size {size} != 8 + {n} + {pos} (trailing or missing bytes)")
    # reference writer: dtype descending (alignment), then name ascending; header in offset order
    want = sorted(entries, key=lambda k: (-ST_ORDER.index(entries[k][0]), k.encode()))
    got = sorted(entries, key=lambda k: entries[k][2])
    if want != got:
        fail(f"{path}: tensor order differs from the reference writer's (dtype desc, name asc)")
    keys_in_header = [k for k in json.loads(text) if k != "__metadata__"]
    if keys_in_header != got:
        fail(f"{path}: header keys not in data-offset order")
    return entries, metadata, 8 + n


def read_range(path, start, end):
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


# ---------------------------------------------------------------- checks

def greedy_shards(names_sizes, max_size):
    """huggingface_hub split_state_dict_into_shards_factory (distinct storages)."""
    shards, current, current_size = [], [], 0
    for name, size in names_sizes:
        if size > max_size:
            shards.append([name])
            continue
        if current_size + size > max_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def check_file_against_reference(path, names, expected):
    """Byte identity with safetensors.torch.save_file when the oracle's safetensors has every
    dtype; otherwise compare data bytes and shapes entry by entry."""
    from safetensors.torch import _TYPES, load_file, save_file
    parsed = parse_safetensors(path)
    if parsed is None:
        return
    entries, metadata, data_start = parsed
    if metadata != {"format": "pt"}:
        fail(f"{path}: __metadata__ is {metadata!r}, expected {{'format': 'pt'}}")
    if set(entries) != set(names):
        fail(f"{path}: holds {sorted(entries)} but the index says {sorted(names)}")
    for name in sorted(set(entries) & set(names)):
        t = expected[name]
        dt, shape, b, e = entries[name]
        if dt != TORCH_TO_ST[t.dtype]:
            fail(f"{path}: tensor {name} has dtype {dt}, expected {TORCH_TO_ST[t.dtype]}")
        if shape != list(t.shape):
            fail(f"{path}: tensor {name} has shape {shape}, expected {list(t.shape)}")
        if read_range(path, data_start + b, data_start + e) != raw_bytes(t):
            fail(f"{path}: tensor {name}: data bytes differ from torch's")
    supported = all(entries[n][0] in _TYPES for n in entries)
    if not supported:
        print(f"note: {os.path.basename(path)} has dtypes the oracle's safetensors cannot load "
              f"({sorted({entries[n][0] for n in entries if entries[n][0] not in _TYPES})}); "
              "checked header rules and bytes instead of load_file/save_file")
        return
    loaded = load_file(path)
    for name in sorted(set(loaded) & set(names)):
        t = expected[name]
        got = loaded[name]
        if got.dtype != t.dtype or got.shape != t.shape or raw_bytes(got) != raw_bytes(t):
            fail(f"{path}: load_file({name}) = {got.dtype} {tuple(got.shape)} is not bitwise "
                 f"equal to torch's {t.dtype} {tuple(t.shape)}")
        elif not torch.isnan(t.float() if not t.is_complex() else t.real).any() \
                and t.dtype not in FLOAT8 and not torch.equal(got, t):
            fail(f"{path}: torch.equal failed for {name}")
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref.safetensors")
        save_file({n: expected[n].clone() for n in names}, ref, metadata={"format": "pt"})
        if not filecmp.cmp(ref, path, shallow=False):
            a, b = open(ref, "rb").read(), open(path, "rb").read()
            at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            fail(f"{path}: not byte-identical to safetensors.torch.save_file (sizes {len(b)} vs "
                 f"reference {len(a)}, first difference at byte {at}); reference header: "
                 f"{a[8:8 + struct.unpack('<Q', a[:8])[0]][:300]!r}")


def check_manifest(out, files_to_names):
    path = os.path.join(out, "ckptstream.manifest.json")
    if not os.path.exists(path):
        fail(f"{path} missing")
        return
    with open(path) as f:
        m = json.load(f)
    if m.get("format") != "ckptstream-manifest" or m.get("version") != 2 \
            or m.get("hash") != "xxh3-128":
        fail(f"{path}: format/version/hash are {m.get('format')!r}/{m.get('version')!r}/"
             f"{m.get('hash')!r}")
    files = m.get("files", {})
    if set(files) != set(files_to_names):
        fail(f"{path}: lists files {sorted(files)}, output has {sorted(files_to_names)}")
    for fname, names in files_to_names.items():
        entry = files.get(fname)
        if entry is None:
            continue
        if entry.get("size") != os.path.getsize(os.path.join(out, fname)):
            fail(f"{path}: size of {fname} is {entry.get('size')}, file has "
                 f"{os.path.getsize(os.path.join(out, fname))}")
        tensors = entry.get("tensors", {})
        if set(tensors) != set(names):
            fail(f"{path}: tensors of {fname} differ from the file's: "
                 f"{sorted(set(tensors) ^ set(names))[:10]}")
        if not re.fullmatch(r"[0-9a-f]{32}", str(entry.get("header_xxh3_128"))):
            fail(f"{path}: {fname}: header_xxh3_128 is not 32 lowercase hex digits")
        # Each tensor's dtype, shape and data_offsets as the file's own header (read here by
        # plain json, not by ckptstream) says them.
        with open(os.path.join(out, fname), "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for n, t in tensors.items():
            h = header.get(n, {})
            if not isinstance(t, dict) or not re.fullmatch(r"[0-9a-f]{32}", str(t.get("xxh3_128"))):
                fail(f"{path}: {fname}: tensor {n}: no 32-hex-digit xxh3_128")
            elif [t.get("dtype"), t.get("shape"), t.get("data_offsets")] != \
                    [h.get("dtype"), h.get("shape"), h.get("data_offsets")]:
                fail(f"{path}: {fname}: tensor {n}: manifest says {t}, header says {h}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp16", "fp32"])
    ap.add_argument("--max-shard-size", type=int, default=5 * 10**9)
    ap.add_argument("--side-files", action="store_true")
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()

    items, alias_groups = expected_tensors(args.sources, args.dtype)
    expected = dict(items)
    dropped = set()
    out_files = sorted(os.listdir(args.out))
    index_path = os.path.join(args.out, "model.safetensors.index.json")
    st_files = [f for f in out_files if f.endswith(".safetensors")]

    # which file holds which tensor
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        weight_map = index.get("weight_map", {})
        files_to_names = {}
        for name, fname in weight_map.items():
            files_to_names.setdefault(fname, []).append(name)
        shards = sorted(files_to_names)
        n = len(shards)
        want_names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        if shards != want_names:
            fail(f"index names files {shards}, expected {want_names}")
        if sorted(st_files) != sorted(shards):
            fail(f"output holds {st_files} but the index names {shards}")
        if n == 1:
            fail("a single shard must be written as model.safetensors without an index")
    else:
        if st_files != ["model.safetensors"]:
            fail(f"no index, so expected exactly model.safetensors; output holds {out_files}")
        files_to_names = {}
        for f in st_files:
            parsed = parse_safetensors(os.path.join(args.out, f))
            if parsed:
                files_to_names[f] = list(parsed[0])
        weight_map = {n: f for f, ns in files_to_names.items() for n in ns}
        index = None

    # names: all source names, one per alias group (lm_head.weight dropped when tied)
    written = set(weight_map)
    for group in alias_groups:
        present = [n for n in group if n in written]
        if len(present) != 1:
            fail(f"aliases {group} (same storage, same view) should be written once; "
                 f"output has {present}")
        if "lm_head.weight" in group and "lm_head.weight" in written:
            fail(f"lm_head.weight is tied to {group} and should be dropped")
        dropped.update(n for n in group if n not in present[:1])
        if present and present[0] != group[0]:
            print(f"note: alias group {group}: kept {present[0]}")
    want = [n for n, _ in items if n not in dropped]
    missing = [n for n in want if n not in written]
    extra = sorted(written - set(expected))
    if missing:
        fail(f"tensors missing from the output: {missing[:20]}")
    if extra:
        fail(f"tensors in the output that torch did not save: {extra[:20]}")

    for fname, names in sorted(files_to_names.items()):
        path = os.path.join(args.out, fname)
        if os.path.exists(path):
            check_file_against_reference(path, [n for n in names if n in expected], expected)

    if index is not None:
        total = sum(expected[n].numel() * expected[n].element_size() for n in weight_map
                    if n in expected)
        got_total = index.get("metadata", {}).get("total_size")
        if got_total != total:
            fail(f"index total_size is {got_total}, tensors hold {total} bytes")
    # greedy sharding in state-dict order (sizes are output bytes)
    sizes = [(n, expected[n].numel() * expected[n].element_size()) for n in want]
    plan = greedy_shards(sizes, args.max_shard_size)
    if len(plan) == 1:
        if index is not None:
            fail("everything fits one shard, yet an index was written")
    else:
        total_n = len(plan)
        for i, names in enumerate(plan, 1):
            fname = f"model-{i:05d}-of-{total_n:05d}.safetensors"
            for n in names:
                if weight_map.get(n) != fname:
                    fail(f"huggingface_hub's greedy split puts {n} in {fname}, "
                         f"output has it in {weight_map.get(n)}")

    check_manifest(args.out, files_to_names)

    if args.side_files:
        for src in args.sources:
            d = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
            for name in SIDE_FILES:
                s = os.path.join(d, name)
                if os.path.exists(s):
                    o = os.path.join(args.out, name)
                    if not os.path.exists(o):
                        fail(f"side file {name} was not copied to the output")
                    elif not filecmp.cmp(s, o, shallow=False):
                        fail(f"side file {name} differs from the source")
    leftovers = [f for f in out_files if f.endswith(TORCH_EXT) or f.endswith(".tmp")
                 or f == "pytorch_model.bin.index.json"]
    if leftovers:
        fail(f"unexpected files in the output: {leftovers}")

    if failures:
        print(f"check_output: {len(failures)} failure(s) for {' '.join(args.sources)} "
              f"(--dtype {args.dtype})")
        return 1
    print(f"ok: {len(want)} tensors in {len(files_to_names)} file(s) match torch "
          f"(--dtype {args.dtype}; {len(alias_groups)} alias group(s) written once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
