#!/usr/bin/env bash
# `plan --dry-run` of the DeepSeek-V3-shaped checkpoint (gen_ckpt.py deepseek: 45 395 tensors,
# 1.34 TB declared as sparse holes; verl FSDP rank files, or with --layout dcp a
# torch.distributed.checkpoint of 725 451 chunk items) at each --threads, warm and (as root) cold page cache, with
# wall, user, sys and peak RSS from measure.py; medians of --runs. Issue 5's target: < 5 s and
# < 512 MiB. Needs only python3 (for the generator and measure.py). --baseline BIN adds the same
# runs of another build, interleaved, for a before/after comparison on one machine.
#
#   bench/plan_scaling.sh --bin PATH [--baseline PATH] [--dir DIR] [--world-size 16] [--runs 3]
#                         [--threads "1 2 16"] [--caches "warm cold"] [--csv FILE]
#                         [--layout fsdp|dcp]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="" baseline="" dir=/var/tmp/ckptstream-bench world=16 runs=3 threads="1 2 16"
caches="warm cold" csv="" layout=fsdp
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --world-size) world=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --caches) caches=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
  esac
done
[ -n "$bin" ] || { echo "--bin is required" >&2; exit 2; }
case "$layout" in
  fsdp) ds="$dir/deepseek-v3-w$world" made="$ds/fsdp_config.json" ;;
  dcp) ds="$dir/deepseek-v3-dcp-w$world" made="$ds/.metadata" ;;
  *) echo "--layout: fsdp or dcp" >&2; exit 2 ;;
esac
mkdir -p "$dir"
csv=${csv:-$dir/plan-scaling-$(date +%Y%m%d-%H%M%S).csv}
if [ ! -e "$made" ]; then
  rm -rf "$ds"
  python3 "$repo/bench/gen_ckpt.py" deepseek "$ds" --world-size "$world" \
    --layout-of-deepseek "$layout" | tail -n 1
fi
sync  # the generator's writeback is not the plan's
echo "cache,build,threads,run,wall_s,user_s,sys_s,maxrss_kib,rc" >"$csv"
echo "machine: $(nproc) cores; DeepSeek-V3 shape, W=$world; raw numbers: $csv"
builds=(new)
[ -n "$baseline" ] && builds+=(baseline)
for cache in $caches; do
  for run in $(seq 1 "$runs"); do
    for t in $threads; do
      for build in "${builds[@]}"; do
        b=$bin
        [ "$build" = baseline ] && b=$baseline
        sync
        if [ "$cache" = cold ]; then
          echo 3 >/proc/sys/vm/drop_caches
        else
          "$b" plan --local_dir "$ds" --dry-run --summary >/dev/null 2>&1
        fi
        line=$(python3 "$repo/bench/measure.py" -- "$b" plan --local_dir "$ds" --dry-run \
          --threads "$t" 2>/dev/null)
        echo "$cache,$build,$t,$run,$line" >>"$csv"
        printf '  %-5s %-8s threads %-3s run %d: %s\n' "$cache" "$build" "$t" "$run" "$line"
      done
    done
  done
done
python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["rc"] == "0"]
keys = dict.fromkeys((r["cache"], r["build"], r["threads"]) for r in rows)
for cache, build, t in keys:
    sel = [r for r in rows if (r["cache"], r["build"], r["threads"]) == (cache, build, t)]
    walls = [float(r["wall_s"]) for r in sel]
    rss = [int(r["maxrss_kib"]) / 1024 for r in sel]
    print(f"{cache:5} {build:8} --threads {t:>2}: median {statistics.median(walls):5.2f} s "
          f"(runs {min(walls):.2f}-{max(walls):.2f}), peak RSS {min(rss):.0f}-{max(rss):.0f} MiB")
PY
