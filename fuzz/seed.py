#!/usr/bin/env python3
"""Seeds the fuzz corpora from tests/fixtures (files written by real torch and safetensors).

    fuzz/seed.py OUT_DIR     ->  OUT_DIR/{pickle,torch_file,dcp_metadata,safetensors}/

pickle: every data.pkl inside the torch.save zips, the pickle_proto*.pkl fixtures and every
.metadata; torch_file: every .pt under 1 MiB; dcp_metadata: every .metadata (also the mutated
errors/*.metadata); safetensors: every .safetensors under 1 MiB. Python standard library only.
"""
import hashlib
import os
import struct
import sys
import zipfile

LIMIT = 1 << 20
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def stored_bytes(archive, info):
    """A STORED record's bytes, read from its local header on: zipfile.read() would refuse the
    records torch writes with compute_crc32=False (CRC 0)."""
    name_len, extra_len = struct.unpack("<HH", archive[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    return archive[start:start + info.file_size]


def put(out, target, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def main(out):
    counts = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                data = f.read() if size <= LIMIT else b""
            targets = []
            if name.endswith(".pt") and data:
                targets.append(("torch_file", data))
                if zipfile.is_zipfile(path):
                    with zipfile.ZipFile(path) as z:
                        for info in z.infolist():
                            if info.filename.endswith("/data.pkl"):
                                targets.append(("pickle", stored_bytes(data, info)))
            elif name.endswith(".pkl") and data:
                targets.append(("pickle", data))
            elif name.endswith(".metadata") and data:
                targets += [("dcp_metadata", data), ("pickle", data)]
            elif name.endswith(".safetensors") and data:
                targets.append(("safetensors", data))
            for target, blob in targets:
                put(out, target, blob)
                counts[target] = counts.get(target, 0) + 1
    for target, n in sorted(counts.items()):
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
