#!/usr/bin/env bash
# Thread scaling of `merge` on one machine, warm (and, as root, cold) page cache, against the physical limit (cat of
# the inputs + a durable O_DIRECT write of the output's size), `cp` + sync, and optionally a torch
# merge (torch_merge.py) run by a Python that has torch (no oracle: for machines that ship torch).
# Needs only python3 and coreutils (measure.py stands in for /usr/bin/time). Medians of --runs.
#
#   bench/scaling.sh --bin PATH [--dir DIR] [--size 10] [--world-size 8] [--runs 3]
#                    [--threads "1 2 4 8 16"] [--torch-python python3] [--caches "warm cold"]
#                    [--csv FILE] [--keep]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=""
dir=/var/tmp/ckptstream-scaling
size=10
world=8
runs=3
threads="1 2 4 8 16"
torch_py=""
csv=""
keep=0
caches=warm
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --world-size) world=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --torch-python) torch_py=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --caches) caches=$2; shift 2 ;;
    *) sed -n '2,8p' "$0" >&2; exit 2 ;;
  esac
done
[ -n "$bin" ] || { echo "--bin is required" >&2; exit 2; }
mkdir -p "$dir"
csv=${csv:-$dir/scaling-$(date +%Y%m%d-%H%M%S).csv}
ck="$dir/ckpt-${size}GB"
out="$dir/out"
echo "cache,method,threads,run,wall_s,user_s,sys_s,maxrss_kib,rc" >"$csv"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "kernel $(uname -r); checkpoint ${size} GB, W=$world; raw numbers: $csv"

if [ ! -e "$ck/fsdp_config.json" ]; then
  rm -rf "$ck"
  python3 "$repo/bench/gen_ckpt.py" fsdp "$ck" --size "${size}GB" --world-size "$world" | tail -n 1
fi
inputs=("$ck"/model_world_size_*.pt)
rm -rf "$out"
"$bin" merge --local_dir "$ck" -o "$out" --quiet
bytes_out=$(du -cb "$out"/*.safetensors | tail -n 1 | cut -f1)
rm -rf "$out"

# prepare: warm = the inputs read into the cache; cold = the cache dropped (root only)
prepare() {
  sync
  if [ "$cache" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "${inputs[@]}" >/dev/null; fi
}

measure() {  # METHOD THREADS RUN -- COMMAND...
  local method=$1 t=$2 run=$3; shift 4
  local line
  prepare
  line=$(python3 "$repo/bench/measure.py" -- "$@")
  echo "$cache,$method,$t,$run,$line" >>"$csv"
  printf '  %-5s %-10s threads %-3s run %d: %s\n' "$cache" "$method" "$t" "$run" "$line"
}

for cache in $caches; do
for run in $(seq 1 "$runs"); do
  measure read - "$run" -- sh -c 'cat "$@" >/dev/null' sh "${inputs[@]}"
  measure write - "$run" -- python3 "$repo/bench/directwrite.py" "$bytes_out" "$dir/limit.out"
  rm -f "$dir/limit.out"
  mkdir -p "$dir/cp-out"
  measure cp - "$run" -- cp "${inputs[@]}" "$dir/cp-out/"
  rm -rf "$dir/cp-out"
  for t in $threads; do
    measure ckptstream "$t" "$run" -- "$bin" merge --local_dir "$ck" -o "$out" --quiet --threads "$t"
    rm -rf "$out"
  done
  if [ -n "$torch_py" ]; then
    measure torch - "$run" -- "$torch_py" "$repo/bench/torch_merge.py" "$ck" "$dir/out-torch"
    rm -rf "$dir/out-torch"
  fi
done
done

python3 - "$csv" <<'EOF'
import csv, statistics, sys
all_rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["rc"] == "0"]
for cache in dict.fromkeys(r["cache"] for r in all_rows):
    rows = [r for r in all_rows if r["cache"] == cache]
    def med(method, t="-"):
        xs = [float(r["wall_s"]) for r in rows if r["method"] == method and r["threads"] == t]
        return statistics.median(xs) if xs else None
    limit = (med("read") or 0) + (med("write") or 0)
    cp, torch = med("cp"), med("torch")
    print(f"\n{cache}: medians: limit {limit:.2f} s (read {med('read'):.2f} + write "
          f"{med('write'):.2f}), cp {cp:.2f} s" + (f", torch {torch:.2f} s" if torch else ""))
    for t in sorted({r["threads"] for r in rows if r["method"] == "ckptstream"}, key=int):
        w = med("ckptstream", t)
        rss = max(int(r["maxrss_kib"]) for r in rows
                  if r["method"] == "ckptstream" and r["threads"] == t)
        print(f"  --threads {t:>2}: {w:6.2f} s  {w / limit:4.2f}x limit  cp/ours {cp / w:4.2f}"
              + (f"  torch/ours {torch / w:5.1f}" if torch else "") + f"  RSS {rss / 1024:.0f} MiB")
EOF
[ "$keep" = 1 ] || rm -rf "$ck"
