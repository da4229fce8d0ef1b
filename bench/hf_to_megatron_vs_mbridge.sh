#!/usr/bin/env bash
# convert --to megatron vs the converter users run today (verl's converter_hf_to_mcore.py with
# mbridge: bench/mbridge_import.py, the megatron-core oracle of ../shared/oracle/megatron.md) for
# one Qwen2-shaped Hugging Face model (gen_ckpt.py, merged to safetensors) to a torch_dist
# checkpoint at TP 2, cold (page cache dropped) and warm, alternating, in one run: wall (with a
# final sync) and peak RSS (/usr/bin/time -v; for mbridge the largest of its processes). Both
# checkpoints are then compared by torch's DCP reader (tools/interop/compare_megatron_dist.py:
# keys, shapes, dtypes, chunks, values). Needs root and the sid oracle with megatron-core and
# mbridge. Not part of ctest.
#   bench/hf_to_megatron_vs_mbridge.sh [--bin PATH] [--size 1GB] [--tp 2] [--runs 2] [--dir D]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/build/ckptstream" size=1GB tp=2 runs=2 dir=/var/tmp/ckptstream-mbridge-import
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;; --size) size=$2; shift 2 ;; --tp) tp=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;; --dir) dir=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$(realpath "$bin")
rm -rf "$dir" && mkdir -p "$dir"
python3 "$repo/bench/gen_ckpt.py" megatron-dist "$dir/src" --size "$size" --tp 1 | tail -n 1
"$bin" merge --local_dir "$dir/src" --target_dir "$dir/hf" -q
rm -rf "$dir/src"
csv="$dir/results.csv"
echo "size,tp,cache,method,run,wall_s,maxrss_kib" >"$csv"
elapsed() { awk -F': ' '/Elapsed/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"; }
rss() { awk -F': ' '/Maximum resident/ {print $2}' "$1"; }
for cache in cold warm; do
  for run in $(seq 1 "$runs"); do
    for method in mbridge ckptstream; do
      rm -rf "$dir/out-$method"
      sync
      if [ "$cache" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "$dir"/hf/*.safetensors >/dev/null; fi
      if [ "$method" = mbridge ]; then
        /usr/bin/time -v -o "$dir/time" sh -c '"$1" --suite sid --bind "$2" --bind "$3" -- env \
          PYTHONPATH=/opt/mlm:/opt/mbridge python3 "$2/bench/mbridge_import.py" "$3/hf" \
          "$3/out-mbridge" --tp "$4" >"$3/mbridge.log" 2>&1; sync' sh "$repo/tools/oracle-run.sh" \
          "$repo" "$dir" "$tp"
      else
        /usr/bin/time -v -o "$dir/time" sh -c '"$1" convert --to megatron "$2/hf" --target_dir "$2/out-ckptstream" --tp "$3" --layout flat --layer-spec local -q; sync' \
          sh "$bin" "$dir" "$tp"
      fi
      echo "$size,$tp,$cache,$method,$run,$(elapsed "$dir/time"),$(rss "$dir/time")" | tee -a "$csv"
    done
  done
done
# mbridge leaves the padded vocabulary rows as initialised (random), ckptstream writes zeros.
vocab=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$dir/hf/config.json")
"$repo/tools/oracle-run.sh" --suite sid --bind "$repo" --bind "$dir" -- python3 \
  "$repo/tools/interop/compare_megatron_dist.py" "$dir/out-ckptstream" "$dir/out-mbridge" \
  --vocab "$vocab" 2>&1 | tail -n 3
echo "raw numbers: $csv"
