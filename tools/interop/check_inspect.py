#!/usr/bin/env python3
"""Checks `ckptstream inspect --json` output against torch (run under the oracle).

    python3 check_inspect.py INSPECT.json SRC...

The JSON must parse, and every tensor name torch finds in the sources must appear in it, with
its dtype and shape when the JSON gives them per tensor as objects with "name"/"dtype"/"shape".
"""
import json
import sys

import torch

from check_output import TORCH_TO_ST, flatten, torch_files


def strings_and_objects(node, strings, objects):
    if isinstance(node, dict):
        objects.append(node)
        for k, v in node.items():
            strings.add(k)
            strings_and_objects(v, strings, objects)
    elif isinstance(node, list):
        for v in node:
            strings_and_objects(v, strings, objects)
    elif isinstance(node, str):
        strings.add(node)


def main(argv):
    try:
        with open(argv[1]) as f:
            doc = json.load(f)
    except ValueError as e:
        print(f"FAIL: inspect --json output is not valid JSON: {e}")
        return 1
    strings, objects = set(), []
    strings_and_objects(doc, strings, objects)
    by_name = {o["name"]: o for o in objects if isinstance(o.get("name"), str)}
    items = []
    for src in argv[2:]:
        for path in torch_files(src):
            flatten(torch.load(path, map_location="cpu", weights_only=False), "", items)
    bad = 0
    for name, t in items:
        if name not in strings:
            print(f"FAIL: inspect --json does not mention tensor {name}")
            bad += 1
            continue
        o = by_name.get(name)
        if o is None:
            continue
        if "shape" in o and list(o["shape"]) != list(t.shape):
            print(f"FAIL: inspect says {name} has shape {o['shape']}, torch {list(t.shape)}")
            bad += 1
        dt = o.get("dtype")
        if isinstance(dt, str) and dt not in (TORCH_TO_ST[t.dtype], str(t.dtype)[6:]):
            print(f"FAIL: inspect says {name} has dtype {dt}, torch {t.dtype}")
            bad += 1
    if bad:
        return 1
    print(f"ok: inspect --json lists all {len(items)} tensors"
          f"{' with matching dtype and shape' if by_name else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
