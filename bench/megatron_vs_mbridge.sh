#!/usr/bin/env bash
# ckptstream merge vs mbridge's CPU export (bench/mbridge_export.py, the megatron-core oracle of
# ../shared/oracle/megatron.md) of one torch_dist checkpoint (gen_ckpt.py megatron-dist, Qwen2.5
# shapes), cold (page cache dropped) and warm, alternating, in one run: wall (with a final sync)
# and peak RSS (/usr/bin/time -v; for mbridge the largest of its processes). Both outputs are
# compared tensor by tensor (ckptstream verify --reference). Needs root and the sid oracle with
# megatron-core and mbridge in it. Not part of ctest.
#   bench/megatron_vs_mbridge.sh [--bin PATH] [--size 1GB] [--tp 2] [--runs 2] [--dir /var/tmp/mb]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/build/ckptstream" size=1GB tp=2 runs=2 dir=/var/tmp/ckptstream-mbridge
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;; --size) size=$2; shift 2 ;; --tp) tp=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;; --dir) dir=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$(realpath "$bin")
rm -rf "$dir" && mkdir -p "$dir"
python3 "$repo/bench/gen_ckpt.py" megatron-dist "$dir/ck" --size "$size" --tp "$tp" | tail -n 1
it=$(echo "$dir"/ck/iter_*)
csv="$dir/results.csv"
echo "size,tp,cache,method,run,wall_s,maxrss_kib" >"$csv"
elapsed() { awk -F': ' '/Elapsed/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"; }
rss() { awk -F': ' '/Maximum resident/ {print $2}' "$1"; }
for cache in cold warm; do
  for run in $(seq 1 "$runs"); do
    for method in mbridge ckptstream; do
      rm -rf "$dir/out-$method"
      sync
      if [ "$cache" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "$it"/__*.distcp >/dev/null; fi
      if [ "$method" = mbridge ]; then
        /usr/bin/time -v -o "$dir/time" sh -c '"$1" --suite sid --bind "$2" --bind "$3" -- env \
          PYTHONPATH=/opt/mlm:/opt/mbridge python3 "$2/bench/mbridge_export.py" "$4" "$3/ck/huggingface" \
          "$3/out-mbridge" --tp "$5" >"$3/mbridge.log" 2>&1; sync' sh "$repo/tools/oracle-run.sh" \
          "$repo" "$dir" "$it" "$tp"
      else
        /usr/bin/time -v -o "$dir/time" sh -c '"$1" merge --local_dir "$2/ck" --target_dir "$2/out-ckptstream" -q; sync' \
          sh "$bin" "$dir"
      fi
      echo "$size,$tp,$cache,$method,$run,$(elapsed "$dir/time"),$(rss "$dir/time")" | tee -a "$csv"
    done
  done
done
"$bin" verify "$dir/out-ckptstream" --reference "$dir/out-mbridge" | tail -n 1
echo "raw numbers: $csv"
