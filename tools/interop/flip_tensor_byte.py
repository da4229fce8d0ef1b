#!/usr/bin/env python3
"""Flips one byte inside one tensor's data of a safetensors file (standard library only, so the
torch-free CLI tests can use it too).

    python3 flip_tensor_byte.py FILE.safetensors [TENSOR]

Without TENSOR, the first non-empty tensor in the header is used. Prints the tensor's name.
"""
import json
import struct
import sys


def main(argv):
    path = argv[1]
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        names = [argv[2]] if len(argv) > 2 else [k for k, v in header.items()
                                                 if v["data_offsets"][1] > v["data_offsets"][0]]
        name = names[0]
        begin, end = header[name]["data_offsets"]
        pos = 8 + n + begin + (end - begin) // 2
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 0x01]))
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
