#!/usr/bin/env python3
"""Writes SIZE bytes of random data to PATH durably: O_DIRECT, 8 MiB writes from a 64 MiB
os.urandom pool (page-aligned, through mmap), then fdatasync. The write half of the physical
limit (bench/run.sh). Falls back to buffered writes + fdatasync where O_DIRECT is refused."""
import mmap
import os
import random
import sys

MIB = 1 << 20


def main():
    size, path = int(sys.argv[1]), sys.argv[2]
    pool = mmap.mmap(-1, 24 * MIB)
    pool.write(os.urandom(24 * MIB))
    view = memoryview(pool)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags | os.O_DIRECT, 0o644)
        direct = True
    except OSError:
        fd = os.open(path, flags, 0o644)
        direct = False
    rng = random.Random(0)
    left = size
    while left:
        n = min(left, 8 * MIB)
        if direct and n % 4096:
            os.close(fd)  # the unaligned tail: buffered
            fd = os.open(path, os.O_WRONLY)
            os.lseek(fd, size - left, os.SEEK_SET)
            direct = False
        off = rng.randrange(0, 16 * MIB // 4096) * 4096
        done = os.write(fd, view[off:off + n])
        left -= done
    os.fdatasync(fd)
    os.close(fd)


if __name__ == "__main__":
    main()
