#!/usr/bin/env bash
# The ckptstream benchmark (issue 5): `merge` of synthetic verl FSDP checkpoints (gen_ckpt.py) of
# several sizes, cold and warm page cache, against
#   limit  the physical limit: `cat` of the inputs > /dev/null, then the output's bytes written
#          durably (directwrite.py: O_DIRECT + fdatasync); wall = the sum of the two
#   cp     `cp` of the input files + `sync`
#   torch  the torch merge verl/accelerate do (torch_merge.py under the oracle: torch.load every
#          shard, cat, save_file), for sizes <= --torch-max-gb
# and `plan --dry-run` (text and --json) of a DeepSeek-V3-shaped checkpoint (~1.34 TB declared,
# sparse). Wall (including a final `sync`), user, sys, peak RSS (/usr/bin/time -v), peak growth of
# `Cached:` in /proc/meminfo (sampled every 100 ms); medians of --runs runs; ratios. Raw numbers
# to a CSV. Needs root (drop_caches; the oracle). Not part of ctest. See bench/README.md.
#
#   bench/run.sh [--bin PATH] [--dir /var/tmp/ckptstream-bench] [--sizes "1 5"] [--runs 3]
#                [--world-size 8] [--dtype bf16|fp32] [--layout fsdp|dcp|megatron|megatron-dist|
#                 hf-megatron-dist|hf-megatron] [--tp 2] [--pp 1] [--torch-max-gb 5]
#                [--no-torch] [--deepseek-world 16] [--no-deepseek] [--no-merge]
#                [--caches "cold warm"] [--csv FILE] [--threads N] [--plan-timeout 120]
#                [--baseline OLD_BINARY]
# --baseline: another build's merge is measured right after this one's in each run, in the same
# cache state (method "baseline"), so that a change is judged on figures of one run.
# The DeepSeek checkpoint (2.2 GB on disk at W=16) is kept in --dir for reuse; delete it after.
# hf-megatron-dist / hf-megatron: the other direction, `convert --to megatron` of a Hugging Face
# model (Qwen2-shaped safetensors, made by merging a generated checkpoint) to a torch_dist /
# legacy checkpoint at --tp x --pp; the limit and cp count the model's safetensors files.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="${CKPTSTREAM_BIN:-$repo/build/ckptstream}"
dir=/var/tmp/ckptstream-bench
sizes="1 5"
runs=3
world=8
dtype=bf16
layout=fsdp
torch_max=5
ds_world=16
do_ds=1
do_merge=1
caches="cold warm"
csv=""
threads=""
plan_timeout=120
baseline=""
tp=2
pp=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --world-size) world=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --pp) pp=$2; shift 2 ;;
    --torch-max-gb) torch_max=$2; shift 2 ;;
    --no-torch) torch_max=0; shift ;;
    --deepseek-world) ds_world=$2; shift 2 ;;
    --no-deepseek) do_ds=0; shift ;;
    --no-merge) do_merge=0; shift ;;
    --caches) caches=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --plan-timeout) plan_timeout=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no ckptstream binary at $bin (build it, or pass --bin)" >&2; exit 2; }
bin=$(realpath "$bin")
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q time </dev/null >/dev/null
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root: cannot drop the page cache" >&2; exit 2; }
mkdir -p "$dir"
dir=$(realpath "$dir")
csv=${csv:-$dir/results-$(date +%Y%m%d-%H%M%S).csv}
work="$dir/work"
mkdir -p "$work"
echo "size_gb,layout,cache,method,run,wall_s,user_s,sys_s,maxrss_kib,cache_growth_kib,bytes_in,bytes_out,rc" >"$csv"
thr=()
[ -n "$threads" ] && thr=(--threads "$threads")

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

# measure SIZE CACHE METHOD RUN BYTES_IN BYTES_OUT -- COMMAND...: one timed run of COMMAND (+ sync)
last_wall=0
measure() {
  local size=$1 cache=$2 method=$3 run=$4 bin_=$5 bout=$6; shift 7
  local log="$work/time.log" mon="$work/cache.mon"
  rm -f "$mon" "$mon.ready"
  python3 "$repo/bench/cachemon.py" "$mon" &
  local mpid=$!
  while [ ! -e "$mon.ready" ]; do sleep 0.02; done
  local t0 t1 rc=0
  t0=$(now)
  /usr/bin/time -v -o "$log" "$@" >"$work/cmd.out" 2>&1 || rc=$?
  sync
  t1=$(now)
  kill -TERM "$mpid"; wait "$mpid" || true
  [ "$rc" = 0 ] || { echo "  $method failed (rc $rc):" >&2; tail -n 5 "$work/cmd.out" >&2; }
  local user sys rss base peak
  user=$(awk -F': ' '/User time/ {print $2}' "$log")
  sys=$(awk -F': ' '/System time/ {print $2}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  read -r base peak <"$mon"
  last_wall=$(python3 -c "print(round($t1 - $t0, 3))")
  echo "$size,$layout,$cache,$method,$run,$last_wall,$user,$sys,$rss,$((peak - base)),$bin_,$bout,$rc" >>"$csv"
  printf '  %-5s %-10s run %d: wall %7.2f s  user %6.2f  sys %6.2f  RSS %8.1f MiB  cache +%7.1f MiB\n' \
    "$cache" "$method" "$run" "$last_wall" "$user" "$sys" "$(python3 -c "print($rss/1024)")" \
    "$(python3 -c "print(($peak - $base)/1024)")"
}

# prepare CACHE INPUTS...: cold: sync + drop_caches; warm: sync + read the inputs into the cache
prepare() {
  local cache=$1; shift
  if [ "$cache" = cold ]; then drop; else sync; cat "$@" >/dev/null; fi
}

echo "ckptstream: $bin ($("$bin" --version 2>/dev/null | head -n 1)); $(nproc) cores; $(uname -r);" \
  "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
echo "raw numbers: $csv"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

if [ "$do_merge" = 1 ]; then
  for size in $sizes; do
    ck="$dir/ckpt-${size}GB"
    need=$(python3 -c "print(int(($size * 2.2 + 1) * 1e9))")
    rm -rf "$ck" "$work"/out-* "$work"/cp-out "$work"/limit.out
    avail=$(df -B1 --output=avail "$dir" | tail -n 1)
    if [ "$avail" -lt "$need" ]; then
      echo "size ${size} GB: skipped, $avail bytes free on $dir, $need needed" >&2
      continue
    fi
    echo
    case "$layout" in
      megatron*) shape=(--tp "$tp" --pp "$pp") ;;
      *) shape=(--world-size "$world") ;;
    esac
    # What is timed: a merge of the checkpoint, or (hf-*) a convert of the Hugging Face model.
    job=("$bin" merge --local_dir "$ck")
    case "$layout" in
      hf-megatron*)
        echo "== ${size} GB: generating a Hugging Face model ($dtype) in $ck"
        python3 "$repo/bench/gen_ckpt.py" megatron-dist "$ck-src" --size "${size}GB" --tp 1 \
          --dtype "$dtype" | tail -n 1
        "$bin" merge --local_dir "$ck-src" -o "$ck" --quiet "${thr[@]}"
        rm -rf "$ck-src"
        format=torch_dist
        [ "$layout" = hf-megatron ] && format=torch
        # An uneven first stage where the layers do not split evenly (as Megatron-LM's
        # --decoder-first-pipeline-num-layers does).
        first=$(python3 -c "import json, sys; n = json.load(open(sys.argv[1]))['num_hidden_layers']; p = int(sys.argv[2]); print(n - (p - 1) * (n // p) if n % p else 0)" "$ck/config.json" "$pp")
        job=("$bin" convert --to megatron "$ck" --tp "$tp" --pp "$pp" --format "$format"
             --first-stage-layers "$first")
        ;;
      *)
        echo "== ${size} GB: generating $layout ${shape[*]} $dtype in $ck"
        python3 "$repo/bench/gen_ckpt.py" "$layout" "$ck" --size "${size}GB" "${shape[@]}" \
          --dtype "$dtype" | tail -n 1
        ;;
    esac
    case "$layout" in
      fsdp) inputs=("$ck"/model_world_size_*.pt) ;;
      megatron) inputs=("$ck"/iter_*/mp_rank_*/model_optim_rng.pt) ;;
      megatron-dist) inputs=("$ck"/iter_*/__*.distcp) ;;
      hf-megatron*) inputs=("$ck"/*.safetensors) ;;
      *) inputs=("$ck"/__*.distcp) ;;
    esac
    bytes_in=$(cat "${inputs[@]}" | wc -c)
    # the output size, from one untimed run
    "${job[@]}" -o "$work/out-probe" --quiet "${thr[@]}"
    bytes_out=$(find "$work/out-probe" -type f \( -name '*.safetensors' -o -name '*.distcp' -o \
      -name '*.pt' \) -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}')
    rm -rf "$work/out-probe"
    echo "   inputs ${#inputs[@]} files, $bytes_in bytes; output $bytes_out bytes of tensor files; load $(loadavg)"
    for cache in $caches; do
      for run in $(seq 1 "$runs"); do
        # limit = read the inputs + write the output's bytes durably, in the same cache state
        prepare "$cache" "${inputs[@]}"
        measure "$size" "$cache" read "$run" "$bytes_in" 0 -- sh -c 'cat "$@" >/dev/null' sh "${inputs[@]}"
        r=$last_wall
        prepare "$cache" "${inputs[@]}"
        measure "$size" "$cache" write "$run" 0 "$bytes_out" -- python3 "$repo/bench/directwrite.py" "$bytes_out" "$work/limit.out"
        rm -f "$work/limit.out"
        echo "$size,$layout,$cache,limit,$run,$(python3 -c "print(round($r + $last_wall, 3))"),,,,,$bytes_in,$bytes_out,0" >>"$csv"
        prepare "$cache" "${inputs[@]}"
        mkdir -p "$work/cp-out"
        measure "$size" "$cache" cp "$run" "$bytes_in" "$bytes_in" -- cp --parents "${inputs[@]}" "$work/cp-out/"
        rm -rf "$work/cp-out"
        prepare "$cache" "${inputs[@]}"
        measure "$size" "$cache" ckptstream "$run" "$bytes_in" "$bytes_out" -- \
          "${job[@]}" -o "$work/out-ck" --quiet "${thr[@]}"
        rm -rf "$work/out-ck"
        if [ -n "$baseline" ]; then
          prepare "$cache" "${inputs[@]}"
          measure "$size" "$cache" baseline "$run" "$bytes_in" "$bytes_out" -- \
            "$baseline" merge --local_dir "$ck" -o "$work/out-base" --quiet "${thr[@]}"
          rm -rf "$work/out-base"
        fi
        if [ "$layout" = fsdp ] && python3 -c "import sys; sys.exit(0 if $size <= $torch_max else 1)"; then
          prepare "$cache" "${inputs[@]}"
          measure "$size" "$cache" torch "$run" "$bytes_in" "$bytes_out" -- \
            "$repo/tools/oracle-run.sh" --bind "$repo" --bind "$dir" -- \
            python3 "$repo/bench/torch_merge.py" "$ck" "$work/out-torch"
          rm -rf "$work/out-torch"
        fi
      done
    done
    rm -rf "$ck"
  done
fi

if [ "$do_ds" = 1 ]; then
  ds="$dir/deepseek-v3-w$ds_world"
  if [ ! -e "$ds/fsdp_config.json" ]; then
    rm -rf "$ds"
    echo
    echo "== DeepSeek-V3 (sparse) W=$ds_world in $ds"
    python3 "$repo/bench/gen_ckpt.py" deepseek "$ds" --world-size "$ds_world" | tail -n 1
  fi
  declared=$(du -cb --apparent-size "$ds"/*.pt | tail -n 1 | cut -f1)
  ondisk=$(du -cB1 "$ds"/*.pt | tail -n 1 | cut -f1)
  echo "   $declared bytes declared, $ondisk on disk"
  for cache in $caches; do
    for run in $(seq 1 "$runs"); do
      [ "$cache" = cold ] && drop
      [ "$cache" = warm ] && { timeout "$plan_timeout" "$bin" plan --local_dir "$ds" --dry-run --summary >/dev/null 2>&1 || true; }
      measure deepseek "$cache" plan "$run" "$declared" 0 -- timeout "$plan_timeout" "$bin" plan --local_dir "$ds" --dry-run "${thr[@]}"
      [ "$cache" = cold ] && drop
      measure deepseek "$cache" plan-json "$run" "$declared" 0 -- timeout "$plan_timeout" "$bin" plan --local_dir "$ds" --dry-run --json "${thr[@]}"
    done
  done
fi

echo
python3 "$repo/bench/report.py" "$csv"
