#!/usr/bin/env python3
"""Samples `Cached:` of /proc/meminfo every 100 ms until SIGTERM/SIGINT, then writes
"BASELINE_KIB PEAK_KIB" to the file given (baseline = the first sample)."""
import signal
import sys
import time


def cached():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def main():
    out = sys.argv[1]
    base = peak = cached()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    with open(out + ".ready", "w"):
        pass
    while not stop:
        peak = max(peak, cached())
        time.sleep(0.1)
    peak = max(peak, cached())
    with open(out, "w") as f:
        f.write(f"{base} {peak}\n")


if __name__ == "__main__":
    main()
