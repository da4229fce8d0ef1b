#!/usr/bin/env bash
# Peak memory and throughput of `ckptstream convert` on a >= 2 GB torch.save file, compared
# with `cp` + `sync` of the same file. Needs root (the oracle makes the input; dropping the
# page cache between runs). Not part of ctest. See bench/README.md.
#   bench/rss.sh [--bin PATH/ckptstream] [--dir WORKDIR] [--tensors 16] [--mib 128] [--keep]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="${CKPTSTREAM_BIN:-$repo/build/ckptstream}"
dir=/var/tmp/ckptstream-bench
tensors=16
mib=128
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --tensors) tensors=$2; shift 2 ;;
    --mib) mib=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--bin ckptstream] [--dir WORKDIR] [--tensors N] [--mib M] [--keep]" >&2; exit 2 ;;
  esac
done
. "$repo/bench/rss_lib.sh"
rss_require_bin
mkdir -p "$dir"
dir=$(realpath "$dir")
src="$dir/big-${tensors}x${mib}MiB.pt"
if [ ! -s "$src" ]; then
  "$repo/tools/oracle-run.sh" --bind "$repo" --bind "$dir" -- \
    python3 "$repo/bench/make_big_torch_file.py" "$src" --tensors "$tensors" --mib "$mib"
fi
bytes=$(stat -c %s "$src")
cleanup() { rm -rf "$dir/cp.out" "$dir/out-keep" "$dir/out-bf16"; [ "$keep" = 1 ] || rm -f "$src"; }
trap cleanup EXIT

echo "input: $src ($bytes bytes); ckptstream: $bin"
measure "cp + sync" cp "$src" "$dir/cp.out"
rm -f "$dir/cp.out"
measure "convert --dtype keep" "$bin" convert "$src" --target_dir "$dir/out-keep" --dtype keep --quiet
measure "verify (keep output)" "$bin" verify "$dir/out-keep" --quiet
rm -rf "$dir/out-keep"
measure "convert --dtype bf16" "$bin" convert "$src" --target_dir "$dir/out-bf16" --dtype bf16 --quiet
out_bytes=$(du -cb "$dir/out-bf16"/*.safetensors | tail -n 1 | cut -f1)
rm -rf "$dir/out-bf16"

summary "$bytes input bytes; bf16 output $out_bytes bytes; $(nproc) cores; $(uname -r)"
