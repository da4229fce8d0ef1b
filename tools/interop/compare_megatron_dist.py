"""Compares a torch_dist checkpoint that ckptstream wrote with one real megatron-core wrote for
the same model and layout, through torch's own DCP reader: every tensor key, global shape,
dtype, chunk box and value, and every byte item key (_extra_state, common_state).
Values are compared bit for bit (NaN payloads included). With --vocab N only the first N rows
of the embedding and output layer are compared (a writer that pads the vocabulary with random
rows, as mbridge leaves them, against one that pads with zeros).
Usage: compare_megatron_dist.py OURS_DIR REAL_DIR [--vocab N]   (the directories holding .metadata)"""
import io
import sys

import torch
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import TensorStorageMetadata


def describe(path):
    md = FileSystemReader(path).read_metadata()
    tensors, items = {}, set()
    for key, meta in md.state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            chunks = sorted((tuple(c.offsets), tuple(c.sizes)) for c in meta.chunks)
            tensors[key] = (tuple(meta.size), meta.properties.dtype, chunks)
        else:
            items.add(key)
    return tensors, items


def values(path, tensors):
    state = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype, _) in tensors.items()}
    load(state, storage_reader=FileSystemReader(path), no_dist=True)
    return state


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                              b.contiguous().view(torch.uint8))


def main(ours, real, vocab=None):
    problems = []
    our_t, our_b = describe(ours)
    real_t, real_b = describe(real)
    for key in sorted(set(real_t) - set(our_t)):
        problems.append(f"missing tensor {key}")
    for key in sorted(set(our_t) - set(real_t)):
        problems.append(f"extra tensor {key}")
    for key in sorted(real_b - our_b):
        problems.append(f"missing item {key}")
    for key in sorted(our_b - real_b):
        problems.append(f"extra item {key}")
    common = sorted(set(our_t) & set(real_t))
    for key in common:
        if our_t[key][:2] != real_t[key][:2]:
            problems.append(f"{key}: {our_t[key][:2]} vs megatron-core's {real_t[key][:2]}")
        elif our_t[key][2] != real_t[key][2]:
            problems.append(f"{key}: chunks {our_t[key][2]} vs megatron-core's {real_t[key][2]}")
    a = values(ours, {k: our_t[k] for k in common})
    b = values(real, {k: real_t[k] for k in common if real_t[k][:2] == our_t[k][:2]})
    for key in b:
        x, y = a[key], b[key]
        if vocab is not None and key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            x, y = x[:vocab], y[:vocab]
        if not same_bits(x, y):
            problems.append(f"{key}: values differ")
    for p in problems:
        print("problem:", p)
    print(f"{len(common)} tensors and {len(our_b & real_b)} byte items compared, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    vocab = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--vocab" else None
    sys.exit(main(sys.argv[1], sys.argv[2], vocab))
