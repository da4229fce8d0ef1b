#!/usr/bin/env bash
# Peak memory and wall time of `ckptstream merge --backend fsdp` on a >= 2 GB verl FSDP2
# checkpoint (2 ranks, float32, real FSDP2 shards made by bench/make_big_fsdp.py under the trixie
# oracle), against `cp` + `sync` of the same rank files and against the torch merge verl does
# (torch.load every shard, torch.cat, safetensors save_file; under the oracle, so its figures
# include the chroot start, about a second). Needs root (the oracle; dropping the page cache).
# Not part of ctest. See bench/README.md.
#   bench/rss_merge.sh [--bin PATH/ckptstream] [--dir WORKDIR] [--layers 2] [--keep] [--no-torch]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="${CKPTSTREAM_BIN:-$repo/build/ckptstream}"
dir=/var/tmp/ckptstream-bench-merge
layers=2
keep=0
torch_runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-torch) torch_runs=0; shift ;;
    *) echo "usage: $0 [--bin ckptstream] [--dir WORKDIR] [--layers N] [--keep] [--no-torch]" >&2; exit 2 ;;
  esac
done
. "$repo/bench/rss_lib.sh"
rss_require_bin
mkdir -p "$dir"
dir=$(realpath "$dir")
src="$dir/ckpt-${layers}l"
oracle() { "$repo/tools/oracle-run.sh" --bind "$repo" --bind "$dir" -- "$@"; }
if [ ! -s "$src/model_world_size_2_rank_1.pt" ]; then
  oracle python3 "$repo/bench/make_big_fsdp.py" make "$src" --layers "$layers" 2>&1 | grep -v gloo
fi
bytes=$(du -cb "$src"/model_world_size_*_rank_*.pt | tail -n 1 | cut -f1)
cleanup() { rm -rf "$dir/cp.out" "$dir"/out-*; [ "$keep" = 1 ] || rm -rf "$src"; }
trap cleanup EXIT

echo "input: $src ($bytes bytes in 2 rank files); ckptstream: $bin; $(nproc) cores"
mkdir -p "$dir/cp.out"
measure "cp + sync (rank files)" cp "$src/model_world_size_2_rank_0.pt" "$src/model_world_size_2_rank_1.pt" "$dir/cp.out/"
rm -rf "$dir/cp.out"
measure "ckptstream merge --dtype keep" "$bin" merge --backend fsdp --local_dir "$src" --target_dir "$dir/out-keep" --dtype keep --quiet
measure "ckptstream verify --source" "$bin" verify "$dir/out-keep" --source --local_dir "$src" --dtype keep --quiet
if [ "$torch_runs" = 1 ]; then
  measure "torch merge (verl), keep" "$repo/tools/oracle-run.sh" --bind "$repo" --bind "$dir" -- python3 "$repo/bench/make_big_fsdp.py" torch-merge "$src" "$dir/out-torch-keep"
  if "$bin" verify "$dir/out-keep" --reference "$dir/out-torch-keep" --quiet; then
    echo "check: ckptstream keep output == torch merge output (verify --reference, exact)"
  else echo "check: ckptstream keep output DIFFERS from the torch merge output"; fi
  cmp -s "$dir/out-keep/model.safetensors" "$dir/out-torch-keep/model.safetensors" \
    && echo "check: model.safetensors byte-identical to torch's save_file" \
    || echo "check: model.safetensors not byte-identical to torch's save_file"
  rm -rf "$dir/out-torch-keep"
fi
rm -rf "$dir/out-keep"
measure "ckptstream merge --dtype bf16" "$bin" merge --backend fsdp --local_dir "$src" --target_dir "$dir/out-bf16" --dtype bf16 --quiet
if [ "$torch_runs" = 1 ]; then
  measure "torch merge (verl), bf16" "$repo/tools/oracle-run.sh" --bind "$repo" --bind "$dir" -- python3 "$repo/bench/make_big_fsdp.py" torch-merge "$src" "$dir/out-torch-bf16" --bf16
  if "$bin" verify "$dir/out-bf16" --reference "$dir/out-torch-bf16" --quiet; then
    echo "check: ckptstream bf16 output == torch merge .bfloat16() output (exact)"
  else echo "check: ckptstream bf16 output DIFFERS from the torch merge output"; fi
  rm -rf "$dir/out-torch-bf16"
fi
rm -rf "$dir/out-bf16"

summary "$bytes input bytes, $(nproc) cores, $(uname -r), ${cache} cache"
