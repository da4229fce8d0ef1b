#!/usr/bin/env python3
"""safetensors helpers in plain Python (no torch, no numpy) for the CLI tests of `merge`
(tests/cli/test_merge*.sh), which run on machines without torch:

  names PATH                   sorted tensor names of a safetensors file or model directory
  subset SRC DST NAME...       writes SRC without the NAMEs to DST
  to_bf16 SRC DST [DROP...]    float32 tensors rounded to bfloat16 as torch's .to() does
  same A B NAME_A NAME_B       exit 0 when tensor NAME_A of A and NAME_B of B are identical
  equal A B                    exit 0 when A and B hold the same tensors (names, dtypes, shapes,
                               bytes); prints the differences otherwise
  plan_names PLAN.json         sorted tensor names of every output file of `plan --json`
  plan_sizes PLAN.json OUT     exit 0 when each planned file in OUT has the planned size
  inspect_dtypes INSPECT.json  the dtypes `inspect --json` lists
"""
import json, os, struct, sys

def read(path):
    """{name: (dtype, shape, bytes)} of a safetensors file or of a directory (index or single)."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
            else ["model.safetensors"]
        out = {}
        for f in files:
            out.update(read(os.path.join(path, f)))
        return out
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}

def write(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

def bf16(blob):
    """float32 bytes -> bfloat16 bytes as torch's .to(torch.bfloat16): round to nearest even."""
    words = struct.unpack(f"<{len(blob) // 4}I", blob)
    out = []
    for u in words:
        if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
            out.append((u >> 16) | 0x0040)                       # NaN stays a (quiet) NaN
        else:
            out.append(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)
    return struct.pack(f"<{len(out)}H", *out)

cmd = sys.argv[1] if len(sys.argv) > 1 else ""
if cmd == "names":            # names PATH: sorted tensor names, one a line
    print("\n".join(sorted(read(sys.argv[2]))))
elif cmd == "subset":         # subset SRC DST NAME...: SRC without the NAMEs
    t = read(sys.argv[2])
    for name in sys.argv[4:]:
        del t[name]
    write(sys.argv[3], t)
elif cmd == "to_bf16":        # to_bf16 SRC DST [DROP...]: float32 tensors rounded to bfloat16
    t = read(sys.argv[2])
    for name in sys.argv[4:]:
        del t[name]
    write(sys.argv[3], {k: ("BF16", s, bf16(b)) if d == "F32" else (d, s, b)
                        for k, (d, s, b) in t.items()})
elif cmd == "same":           # same A B NAME_A NAME_B: the two tensors are identical
    a, b = read(sys.argv[2])[sys.argv[4]], read(sys.argv[3])[sys.argv[5]]
    sys.exit(0 if a == b else 1)
elif cmd == "equal":          # equal A B: same tensors, dtypes, shapes and bytes
    a, b = read(sys.argv[2]), read(sys.argv[3])
    diffs = sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    for k in diffs[:10]:
        print("differs:", k, a.get(k, ("absent",))[:2], b.get(k, ("absent",))[:2])
    sys.exit(1 if diffs else 0)
elif cmd == "plan_names":     # plan_names PLAN.json: sorted tensor names of every output file
    plan = json.load(open(sys.argv[2]))
    print("\n".join(sorted(t["name"] for f in plan["files"] for t in f["tensors"])))
elif cmd == "plan_sizes":     # plan_sizes PLAN.json OUT: each planned file has the planned size
    plan = json.load(open(sys.argv[2]))
    bad = [f["name"] for f in plan["files"]
           if os.path.getsize(os.path.join(sys.argv[3], f["name"])) != f["size"]]
    sys.exit(1 if bad else 0)
elif cmd == "inspect_dtypes":  # inspect_dtypes INSPECT.json: sorted set of dtypes
    d = json.load(open(sys.argv[2]))
    print(" ".join(sorted({t["dtype"] for f in d["files"] for t in f["tensors"]})))
else:
    print(__doc__)
    sys.exit(2)
