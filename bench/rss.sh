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
[ -x "$bin" ] || { echo "no ckptstream binary at $bin (build it, or pass --bin)" >&2; exit 2; }
bin=$(realpath "$bin")
[ -x /usr/bin/time ] || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q time </dev/null >/dev/null; }
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

drop_caches() {  # cold page cache for every run, when allowed
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; cache=cold; else cache=warm; fi
}
now() { date +%s.%N; }
results=()
# measure LABEL COMMAND... : wall time (including a final sync) and peak RSS of COMMAND.
measure() {
  local label=$1; shift
  drop_caches
  local t0 t1 log="$dir/$label.time"
  t0=$(now)
  /usr/bin/time -v -o "$log" "$@"
  sync
  t1=$(now)
  local wall rss
  wall=$(python3 -c "print($t1 - $t0)")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  results+=("$label|$wall|$rss")
  printf '%-28s wall %8.2f s   %7.3f GB/s   peak RSS %8.1f MiB   (%s cache)\n' "$label" "$wall" \
    "$(python3 -c "print($bytes / $wall / 1e9)")" "$(python3 -c "print($rss / 1024)")" "$cache"
}

echo "input: $src ($bytes bytes); ckptstream: $bin"
measure "cp + sync" cp "$src" "$dir/cp.out"
rm -f "$dir/cp.out"
measure "convert --dtype keep" "$bin" convert "$src" --target_dir "$dir/out-keep" --dtype keep --quiet
measure "verify (keep output)" "$bin" verify "$dir/out-keep" --quiet
rm -rf "$dir/out-keep"
measure "convert --dtype bf16" "$bin" convert "$src" --target_dir "$dir/out-bf16" --dtype bf16 --quiet
out_bytes=$(du -cb "$dir/out-bf16"/*.safetensors | tail -n 1 | cut -f1)
rm -rf "$dir/out-bf16"

echo
echo "summary ($bytes input bytes; bf16 output $out_bytes bytes; $(nproc) cores; $(uname -r))"
cp_wall=${results[0]#*|}; cp_wall=${cp_wall%%|*}
for r in "${results[@]}"; do
  IFS='|' read -r label wall rss <<<"$r"
  python3 -c "print(f'  {\"$label\":<24} {$wall:7.2f} s  {$wall / $cp_wall:5.2f}x cp+sync  peak RSS {$rss / 1024:7.1f} MiB')"
done
