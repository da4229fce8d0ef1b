"""Checks torch.save files written natively by ckptstream (src/torch/torch_writer.h) with torch.

    python3 check_torch_writer.py OURS_DIR TORCH_DIR

OURS_DIR holds the files and cases.txt written by the unit test `test_torch_writer` (with
CKPT_TORCH_WRITER_OUT set). Each line of cases.txt:

    <file> <dict|ordered> <tensor> <tensor> ...

with <tensor> = <hex of the key path, components joined by 0x1F, or "-">:<dtype>:<d0,d1,...>.
Byte k of tensor i is (131 k + 17 i + 7) mod 256 (masked to 0/1 for bool).

For each file: torch.load(weights_only=True) must give the same container types, keys in the
same order, and tensors of the same dtype and shape with equal bytes (and torch.equal where torch
implements it and no NaN is involved). Then the same object is built in torch and torch.save'd
to TORCH_DIR/<file>; the two files must be byte-identical. Prints "ok <file>: ..." or
"FAIL <file>: ..." per file and exits 1 if any failed.
"""

import collections
import os
import sys

import torch


def pattern(i, nbytes, dtype):
    if nbytes == 0:
        return None
    k = torch.arange(nbytes, dtype=torch.int64)
    b = ((131 * k + 17 * i + 7) & 0xFF).to(torch.uint8)
    if dtype == torch.bool:
        b = b & 1
    return b


def expected_tensor(i, dtype, shape):
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    raw = pattern(i, nbytes, dtype)
    if raw is None:
        return torch.empty(shape, dtype=dtype)
    return raw.view(dtype).reshape(shape).clone()


def parse_case(line):
    fields = line.split()
    name, kind, specs = fields[0], fields[1], fields[2:]
    tensors = []
    for spec in specs:
        key_hex, dtype_name, dims = spec.split(":")
        key = "" if key_hex == "-" else bytes.fromhex(key_hex).decode("utf-8")
        path = key.split("\x1f")
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        tensors.append((path, getattr(torch, dtype_name), shape))
    return name, kind, tensors


def build(kind, tensors):
    root = collections.OrderedDict() if kind == "ordered" else {}
    for i, (path, dtype, shape) in enumerate(tensors):
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = expected_tensor(i, dtype, shape)
    return root


def bits(t):
    """The tensor's bytes, flat uint8: compares NaNs and dtypes that torch.equal lacks."""
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return t.reshape(-1).view(torch.uint8)


def compare(expected, actual, where, problems):
    if type(expected) is not type(actual):
        problems.append(f"{where}: {type(actual).__name__}, expected {type(expected).__name__}")
        return 0
    if isinstance(expected, dict):
        if list(expected.keys()) != list(actual.keys()):
            problems.append(f"{where}: keys {list(actual.keys())[:5]}..., expected "
                            f"{list(expected.keys())[:5]}...")
            return 0
        return sum(compare(expected[k], actual[k], f"{where}/{k}", problems) for k in expected)
    e, a = expected, actual
    if a.dtype != e.dtype or a.shape != e.shape:
        problems.append(f"{where}: {a.dtype} {tuple(a.shape)}, expected {e.dtype} {tuple(e.shape)}")
        return 0
    if not a.is_contiguous() or a.storage_offset() != 0:
        problems.append(f"{where}: not contiguous at offset 0")
    if not torch.equal(bits(a), bits(e)):
        problems.append(f"{where}: bytes differ")
        return 0
    try:
        has_nan = e.dtype.is_floating_point and bool(torch.isnan(e.float()).any())
        if not has_nan and e.numel() and not torch.equal(a, e):
            problems.append(f"{where}: torch.equal is False")
    except (RuntimeError, TypeError):
        pass  # torch.equal / isnan not implemented for this dtype (float8, complex32): bytes agree
    return 1


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ours_dir, torch_dir = sys.argv[1], sys.argv[2]
    os.makedirs(torch_dir, exist_ok=True)
    failures = 0
    with open(os.path.join(ours_dir, "cases.txt"), encoding="utf-8") as f:
        cases = [parse_case(line) for line in f if line.strip()]
    print(f"torch {torch.__version__}: {len(cases)} files")
    for name, kind, tensors in cases:
        problems = []
        expected = build(kind, tensors)
        ours = os.path.join(ours_dir, name)
        try:
            loaded = torch.load(ours, weights_only=True)
            count = compare(expected, loaded, "", problems)
        except Exception as err:  # noqa: BLE001 - report whatever torch raises
            problems.append(f"torch.load: {type(err).__name__}: {err}")
            count = 0
        reference = os.path.join(torch_dir, name)
        torch.save(expected, reference)
        with open(ours, "rb") as f:
            mine = f.read()
        with open(reference, "rb") as f:
            theirs = f.read()
        if mine != theirs:
            at = first_difference(mine, theirs)
            problems.append(f"differs from torch.save at byte {at} of {len(theirs)} "
                            f"(ours {len(mine)} bytes): ours {mine[at:at + 16].hex()} "
                            f"torch {theirs[at:at + 16].hex()}")
        if problems:
            failures += 1
            print(f"FAIL {name}: " + "; ".join(problems[:5]))
        else:
            print(f"ok {name}: torch.load gives {count} equal tensors in order; "
                  f"byte-identical to torch.save ({len(mine)} bytes)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
