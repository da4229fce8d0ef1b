#!/usr/bin/env python3
"""Writes malformed torch checkpoints for the bad-input tests (run under the oracle).

    python3 make_bad.py OUTDIR

Each file starts as a real torch.save file and is then damaged in one precise way; records
keep their offsets and CRC-32s are recomputed, so each file has exactly the one defect its
name says:
  truncated.pt         the first 60% of a valid file (no central directory)
  garbage.pt           4 KiB of pseudo-random bytes
  empty.pt             0 bytes
  missing_record.pt    the storage record data/0 renamed to data/X (data.pkl still refers to it)
  past_storage.pt      a tensor's shape patched so the view reaches past its storage's end
  bad_opcode.pt        data.pkl's STOP opcode replaced by the undefined opcode 0xff
  corrupt_cd.pt        the first central-directory entry's signature zeroed
  legacy_truncated.pt  a legacy (non-zip) file cut in half
"""
import collections
import os
import random
import struct
import sys
import zlib

import torch


def valid_file(path, legacy=False):
    gen = torch.Generator().manual_seed(99)
    sd = collections.OrderedDict()
    sd["weight"] = torch.randn(10, 10, generator=gen)
    sd["bias"] = torch.randn(10, generator=gen)
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    with open(path, "rb") as f:
        return bytearray(f.read())


def zip_entries(data):
    """(name, local header offset, central entry offset, data offset, size) of each record."""
    eocd = data.rfind(b"PK\x05\x06")
    cd_count = struct.unpack_from("<H", data, eocd + 10)[0]
    cd_off = struct.unpack_from("<I", data, eocd + 16)[0]
    if cd_off == 0xFFFFFFFF or cd_count == 0xFFFF:
        loc = data.rfind(b"PK\x06\x07")
        eocd64 = struct.unpack_from("<Q", data, loc + 8)[0]
        cd_count = struct.unpack_from("<Q", data, eocd64 + 32)[0]
        cd_off = struct.unpack_from("<Q", data, eocd64 + 48)[0]
    entries = []
    pos = cd_off
    for _ in range(cd_count):
        assert data[pos:pos + 4] == b"PK\x01\x02"
        comp_size, size = struct.unpack_from("<II", data, pos + 20)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        name = bytes(data[pos + 46:pos + 46 + name_len]).decode()
        extra = data[pos + 46 + name_len:pos + 46 + name_len + extra_len]
        # zip64 extended information: sizes and offset, in that order, when the fields are full
        i = 0
        while i + 4 <= len(extra):
            tag, ln = struct.unpack_from("<HH", extra, i)
            if tag == 1:
                vals = list(struct.unpack_from(f"<{ln // 8}Q", extra, i + 4))
                if size == 0xFFFFFFFF:
                    size = vals.pop(0)
                if comp_size == 0xFFFFFFFF:
                    vals.pop(0)
                if local == 0xFFFFFFFF:
                    local = vals.pop(0)
            i += 4 + ln
        l_name_len, l_extra_len = struct.unpack_from("<HH", data, local + 26)
        entries.append((name, local, pos, local + 30 + l_name_len + l_extra_len, size))
        pos += 46 + name_len + extra_len + comment_len
    return entries


def patch_record(data, suffix, transform):
    """Replaces the payload of the record whose name ends with suffix (same length), fixing
    the CRC-32 in its local header and central directory entry."""
    for name, local, central, start, size in zip_entries(data):
        if name.endswith(suffix):
            new = transform(bytes(data[start:start + size]))
            assert len(new) == size
            data[start:start + size] = new
            crc = zlib.crc32(new) & 0xFFFFFFFF
            struct.pack_into("<I", data, local + 14, crc)
            struct.pack_into("<I", data, central + 16, crc)
            return data
    raise SystemExit(f"no record ending in {suffix}")


def rename_record(data, suffix, new_suffix):
    old = suffix.encode()
    new = new_suffix.encode()
    for name, local, central, _, _ in zip_entries(data):
        if name.endswith(suffix):
            for hdr, name_at in ((local, local + 30), (central, central + 46)):
                end = name_at + len(name.encode())
                assert data[end - len(old):end] == old
                data[end - len(new):end] = new
            return data
    raise SystemExit(f"no record ending in {suffix}")


def write(out, name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def main(argv):
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "valid.tmp")
    data = valid_file(tmp)
    write(out, "truncated.pt", data[:len(data) * 6 // 10])
    write(out, "garbage.pt", random.Random(5).randbytes(4096))
    write(out, "empty.pt", b"")
    write(out, "missing_record.pt", rename_record(bytearray(data), "data/0", "data/X"))

    def widen_shape(pkl):
        # weight: shape (10, 10) is BININT1 10 BININT1 10 TUPLE2; make it (10, 20), strides (10, 1)
        seq = b"K\x0aK\x0a\x86"
        assert pkl.count(seq) >= 1
        return pkl.replace(seq, b"K\x0aK\x14\x86", 1)
    write(out, "past_storage.pt", patch_record(bytearray(data), "data.pkl", widen_shape))

    def bad_stop(pkl):
        assert pkl.endswith(b".")
        return pkl[:-1] + b"\xff"
    write(out, "bad_opcode.pt", patch_record(bytearray(data), "data.pkl", bad_stop))

    cd = bytearray(data)
    _, _, central, _, _ = zip_entries(cd)[0]
    cd[central:central + 4] = b"\0\0\0\0"
    write(out, "corrupt_cd.pt", cd)

    legacy = valid_file(tmp, legacy=True)
    write(out, "legacy_truncated.pt", legacy[:len(legacy) // 2])
    os.remove(tmp)
    # sanity: real torch rejects every one of them
    for name in sorted(os.listdir(out)):
        try:
            torch.load(os.path.join(out, name), weights_only=True)
        except Exception:
            continue
        raise SystemExit(f"torch.load accepted {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
