#!/usr/bin/env python3
"""Summarises a bench/run.sh CSV: medians per (size, cache, method), ratios, issue 5's targets.

    report.py RESULTS.csv [--markdown]
"""
import collections
import csv
import statistics
import sys

TARGETS = "warm <= 1.5x limit; cold >= 0.9x the best plain copy (speed); >= 10x faster than torch; " \
          "RSS <= 64 MiB; cache growth <= 1 GiB; plan < 5 s and < 512 MiB"


def med(rows, key):
    vals = [float(r[key]) for r in rows if r[key] not in ("", None)]
    return statistics.median(vals) if vals else None


def main():
    path = sys.argv[1]
    md = "--markdown" in sys.argv
    rows = list(csv.DictReader(open(path)))
    groups = collections.OrderedDict()
    for r in rows:
        groups.setdefault((r["size_gb"], r["cache"]), collections.OrderedDict()) \
            .setdefault(r["method"], []).append(r)
    fmt = "| {} |" if md else "{}"
    sep = " | " if md else "  "
    head = ["size", "cache", "method", "n", "wall s", "GB/s in", "x limit", "x cp", "torch/x",
            "user s", "sys s", "RSS MiB", "cache+ MiB"]
    print(fmt.format(sep.join(head)))
    if md:
        print("|" + "---|" * len(head))
    verdicts = []
    for (size, cache), methods in groups.items():
        if size == "deepseek":
            continue
        limit = med(methods.get("limit", []), "wall_s")
        cp = med(methods.get("cp", []), "wall_s")
        ck = med(methods.get("ckptstream", []), "wall_s")
        torch = med(methods.get("torch", []), "wall_s")
        base = med(methods.get("baseline", []), "wall_s")
        for m in ("limit", "read", "write", "cp", "ckptstream", "baseline", "torch"):
            if m not in methods:
                continue
            rs = methods[m]
            w = med(rs, "wall_s")
            bin_ = max(float(r["bytes_in"] or 0) for r in rs)
            bin_ = bin_ or max(float(r["bytes_out"] or 0) for r in rs)
            rss = med(rs, "maxrss_kib")
            cg = med(rs, "cache_growth_kib")
            cells = [size + " GB", cache, m, str(len(rs)), f"{w:.2f}",
                     f"{bin_ / w / 1e9:.3f}" if w else "",
                     f"{w / limit:.2f}" if limit and m != "read" and m != "write" else "",
                     f"{w / cp:.2f}" if cp else "",
                     f"{torch / w:.1f}" if torch and m == "ckptstream" else "",
                     f"{med(rs, 'user_s'):.2f}" if med(rs, "user_s") is not None else "",
                     f"{med(rs, 'sys_s'):.2f}" if med(rs, "sys_s") is not None else "",
                     f"{rss / 1024:.1f}" if rss is not None else "",
                     f"{cg / 1024:.0f}" if cg is not None else ""]
            print(fmt.format(sep.join(cells)))
        if ck is None:
            continue
        rs = methods["ckptstream"]
        rss = max(float(r["maxrss_kib"]) for r in rs) / 1024
        cg = max(float(r["cache_growth_kib"]) for r in rs) / 1024
        if cache == "warm" and limit:
            verdicts.append((f"{size} GB warm: ckptstream <= 1.5x limit", ck / limit, ck <= 1.5 * limit))
        if cache == "cold" and cp:
            verdicts.append((f"{size} GB cold: ckptstream speed >= 0.9x cp+sync (time <= 1.11x)",
                             cp / ck, ck <= cp / 0.9))
        if torch:
            verdicts.append((f"{size} GB {cache}: >= 10x faster than torch merge", torch / ck,
                             torch >= 10 * ck))
        if base:
            verdicts.append((f"{size} GB {cache}: ckptstream time / baseline's (no slower: <= 1.05)",
                             ck / base, ck <= 1.05 * base))
        verdicts.append((f"{size} GB {cache}: peak RSS <= 64 MiB (max of runs)", rss, rss <= 64))
        verdicts.append((f"{size} GB {cache}: cache growth <= 1024 MiB (max of runs)", cg, cg <= 1024))
    for (size, cache), methods in groups.items():
        if size != "deepseek":
            continue
        for m, rs in methods.items():
            w = med(rs, "wall_s")
            rss = med(rs, "maxrss_kib") / 1024
            decl = float(rs[0]["bytes_in"])
            print(fmt.format(sep.join([f"DeepSeek-V3 {decl / 1e12:.2f} TB", cache, m, str(len(rs)),
                                       f"{w:.2f}", "", "", "", "", f"{med(rs, 'user_s'):.2f}",
                                       f"{med(rs, 'sys_s'):.2f}", f"{rss:.1f}",
                                       f"{med(rs, 'cache_growth_kib') / 1024:.0f}"])))
            verdicts.append((f"DeepSeek {cache} {m}: < 5 s", w, w < 5))
            verdicts.append((f"DeepSeek {cache} {m}: < 512 MiB RSS", rss, rss < 512))
    print()
    print("targets (issue 5): " + TARGETS)
    for name, val, ok in verdicts:
        print(f"  {'MET ' if ok else 'MISS'}  {name}: {val:.2f}")


if __name__ == "__main__":
    main()
