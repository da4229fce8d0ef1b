#!/usr/bin/env python3
"""Runs a command and prints one CSV line: wall_s,user_s,sys_s,maxrss_kib,rc (wall includes a
final sync, as in run.sh). For machines without /usr/bin/time (bench/scaling.sh).

    measure.py -- COMMAND [ARGS...]
"""
import os
import subprocess
import sys
import time


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit(__doc__)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    os.sync()
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    print(f"{wall:.3f},{usage.ru_utime:.2f},{usage.ru_stime:.2f},{usage.ru_maxrss},{rc}")


if __name__ == "__main__":
    main()
