#!/usr/bin/env python3
"""What the disk itself can do, whatever the program: the ceiling that no merge can pass.

    bench/disk_probe.py [--dir /var/tmp/ckptstream-probe] [--gib 8] [--streams 1,2,4,8,16]

For each stream count N, with the page cache dropped first (root):
  write      N threads, each writing its share of --gib into a file of its own (O_DIRECT, 8 MiB
             pwritev from a random buffer, then fdatasync): the durable write rate
  write2     the same bytes into 2 files, N threads at distinct offsets (an 8 GB merge writes
             two 5 GB-max output files: can more writers per file help?)
  read       N threads reading 16 files of --gib / 16 (O_DIRECT, 8 MiB preadv)
and once: `cat` of the 16 files (buffered, kernel readahead), and N/2 readers and N/2 writers at
the same time (max N) of --gib each: does reading overlap writing, or share one bandwidth?
Prints CSV: op,streams,bytes,wall_s,gb_per_s. Python 3 standard library only; not part of ctest.
"""
import argparse
import mmap
import os
import subprocess
import sys
import threading
import time

MIB = 1 << 20
CHUNK = 8 * MIB


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def direct_write(path, offset, length, buf):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        end = offset + length
        while offset < end:
            n = min(CHUNK, end - offset)
            offset += os.pwritev(fd, [memoryview(buf)[:n]], offset)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def direct_read(path, offset, length):
    buf = mmap.mmap(-1, CHUNK)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        end = offset + length
        while offset < end:
            got = os.preadv(fd, [memoryview(buf)[: min(CHUNK, end - offset)]], offset)
            if got <= 0:
                raise OSError(f"{path}: short read at {offset}")
            offset += got
    finally:
        os.close(fd)


def timed(jobs):
    """Runs every (function, args) in a thread of its own; the wall time of them all."""
    threads = [threading.Thread(target=f, args=a) for f, a in jobs]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/ckptstream-probe")
    ap.add_argument("--gib", type=float, default=8)
    ap.add_argument("--streams", default="1,2,4,8,16")
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    if any(n < 1 or 16 % n for n in streams):
        ap.error("--streams: each count must divide 16 (the files are split evenly)")
    total = int(args.gib * (1 << 30)) // (16 * CHUNK) * (16 * CHUNK)
    os.makedirs(args.dir, exist_ok=True)
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(CHUNK))
    path = lambda name: os.path.join(args.dir, name)
    clear = lambda prefix: [os.remove(path(f)) for f in os.listdir(args.dir) if f.startswith(prefix)]

    print(f"# {os.cpu_count()} cores, {args.dir}, {total} bytes per measurement")
    print("op,streams,bytes,wall_s,gb_per_s")

    def report(op, n, wall):
        print(f"{op},{n},{total},{wall:.3f},{total / wall / 1e9:.3f}", flush=True)

    for n in streams:
        clear("w")
        drop_caches()
        share = total // n
        report("write", n, timed([(direct_write, (path(f"w{i}"), 0, share, buf)) for i in range(n)]))
    for n in [s for s in streams if s >= 2]:
        clear("w")
        drop_caches()
        share = total // n
        jobs = [(direct_write, (path(f"w{i % 2}"), (i // 2) * share, share, buf)) for i in range(n)]
        report("write2", n, timed(jobs))
    clear("w")
    part = total // 16
    timed([(direct_write, (path(f"r{i}"), 0, part, buf)) for i in range(16)])
    for n in streams:
        drop_caches()

        def reader(first, step=n):
            for i in range(first, 16, step):
                direct_read(path(f"r{i}"), 0, part)

        report("read", n, timed([(reader, (j,)) for j in range(n)]))
    drop_caches()
    start = time.monotonic()
    subprocess.run(["cat"] + [path(f"r{i}") for i in range(16)], stdout=subprocess.DEVNULL, check=True)
    report("cat", 1, time.monotonic() - start)
    half = max(1, max(streams) // 2)
    drop_caches()

    def reader_of(first):
        for i in range(first, 16, half):
            direct_read(path(f"r{i}"), 0, part)

    jobs = [(reader_of, (j,)) for j in range(half)]
    jobs += [(direct_write, (path(f"w{i}"), 0, total // half, buf)) for i in range(half)]
    report("read+write", 2 * half, timed(jobs))  # bytes: each way
    clear("w")
    clear("r")
    return 0


if __name__ == "__main__":
    sys.exit(main())
