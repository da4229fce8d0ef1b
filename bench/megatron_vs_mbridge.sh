#!/usr/bin/env bash
# ckptstream against mbridge (real megatron-core and mbridge in the sid oracle,
# ../shared/oracle/megatron.md) on one Qwen2.5-shaped model (gen_ckpt.py), cold (page cache
# dropped) and warm, alternating, in one run: wall (with a final sync) and peak RSS
# (/usr/bin/time -v; for mbridge the largest of its processes). Needs root. Not part of ctest.
#   --direction export (default): a torch_dist TP checkpoint to Hugging Face safetensors;
#     `merge` against mbridge's CPU export (bench/mbridge_export.py: build the model at the
#     checkpoint's TP, dist_checkpointing.load, bridge.save_weights); the outputs are compared
#     tensor by tensor (ckptstream verify --reference).
#   --direction import: a Hugging Face model to a torch_dist TP checkpoint; `convert --to
#     megatron` against verl's converter as it runs with mbridge (bench/mbridge_import.py: build
#     the model, bridge.load_weights, dist_checkpointing.save); the checkpoints are compared with
#     torch's DCP reader (tools/interop/compare_megatron_dist.py: keys, shapes, dtypes, chunks,
#     values; mbridge leaves the padded vocabulary rows random, ckptstream writes zeros).
#   bench/megatron_vs_mbridge.sh [--direction export|import] [--bin PATH] [--size 1GB] [--tp 2]
#                                [--runs 2] [--dir D]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/build/ckptstream" size=1GB tp=2 runs=2 dir=/var/tmp/ckptstream-mbridge direction=export
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;; --size) size=$2; shift 2 ;; --tp) tp=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;; --dir) dir=$2; shift 2 ;; --direction) direction=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$(realpath "$bin")
rm -rf "$dir" && mkdir -p "$dir"
oracle=("$repo/tools/oracle-run.sh" --suite sid --bind "$repo" --bind "$dir" -- env
        PYTHONPATH=/opt/mlm:/opt/mbridge python3)
case "$direction" in
  export)
    python3 "$repo/bench/gen_ckpt.py" megatron-dist "$dir/ck" --size "$size" --tp "$tp" | tail -n 1
    it=$(echo "$dir"/ck/iter_*)
    inputs=("$it"/__*.distcp)
    mbridge=("${oracle[@]}" "$repo/bench/mbridge_export.py" "$it" "$dir/ck/huggingface"
             "$dir/out-mbridge" --tp "$tp")
    ours=("$bin" merge --local_dir "$dir/ck" --target_dir "$dir/out-ckptstream" -q)
    ;;
  import)
    python3 "$repo/bench/gen_ckpt.py" megatron-dist "$dir/src" --size "$size" --tp 1 | tail -n 1
    "$bin" merge --local_dir "$dir/src" --target_dir "$dir/hf" -q
    rm -rf "$dir/src"
    inputs=("$dir"/hf/*.safetensors)
    mbridge=("${oracle[@]}" "$repo/bench/mbridge_import.py" "$dir/hf" "$dir/out-mbridge" --tp "$tp")
    ours=("$bin" convert --to megatron "$dir/hf" --target_dir "$dir/out-ckptstream" --tp "$tp"
          --layout flat --layer-spec local -q)
    ;;
  *) echo "--direction export or import" >&2; exit 2 ;;
esac
csv="$dir/results.csv"
echo "size,tp,cache,method,run,wall_s,maxrss_kib" >"$csv"
elapsed() { awk -F': ' '/Elapsed/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"; }
rss() { awk -F': ' '/Maximum resident/ {print $2}' "$1"; }
for cache in cold warm; do
  for run in $(seq 1 "$runs"); do
    for method in mbridge ckptstream; do
      rm -rf "$dir/out-$method"
      sync
      if [ "$cache" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "${inputs[@]}" >/dev/null; fi
      if [ "$method" = mbridge ]; then
        /usr/bin/time -v -o "$dir/time" sh -c '"$@" >"$0" 2>&1; sync' "$dir/mbridge.log" "${mbridge[@]}"
      else
        /usr/bin/time -v -o "$dir/time" sh -c '"$@"; sync' sh "${ours[@]}"
      fi
      echo "$size,$tp,$cache,$method,$run,$(elapsed "$dir/time"),$(rss "$dir/time")" | tee -a "$csv"
    done
  done
done
if [ "$direction" = export ]; then
  "$bin" verify "$dir/out-ckptstream" --reference "$dir/out-mbridge" | tail -n 1
else
  vocab=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$dir/hf/config.json")
  "$repo/tools/oracle-run.sh" --suite sid --bind "$repo" --bind "$dir" -- python3 \
    "$repo/tools/interop/compare_megatron_dist.py" "$dir/out-ckptstream" "$dir/out-mbridge" \
    --vocab "$vocab" 2>&1 | tail -n 3
fi
echo "raw numbers: $csv"
