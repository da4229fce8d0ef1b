#!/usr/bin/env bash
# README command (1): on a Debian 12 machine, installs the build dependencies, builds ckptstream,
# merges the bundled verl FSDP sample checkpoint (tests/fixtures/fsdp/w4, 4 ranks, made by real
# torch) into a Hugging Face model in ./out/fsdp-hf and verifies it against its source; then
# converts a plain torch.save sample (tests/fixtures/sample) to ./out/sample-hf.
#   tools/demo.sh            build dir: ./build (CKPTSTREAM_BUILD_DIR overrides)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${CKPTSTREAM_BUILD_DIR:-$repo/build}
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo

echo "== installing Debian packages"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q </dev/null
$sudo apt-get install -y -q --no-install-recommends </dev/null \
  build-essential cmake libboost-iostreams-dev libsimdjson-dev libzstd-dev libxxhash-dev libdeflate-dev \
  libcli11-dev doctest-dev

echo "== building in $build"
cmake -S "$repo" -B "$build" </dev/null
cmake --build "$build" --target ckptstream -j2 </dev/null
ckpt="$build/ckptstream"

# The main job: a verl FSDP2 checkpoint (4 ranks, uneven and empty shards, made by real torch)
# merged into a Hugging Face model, then checked against its source without rewriting it.
ckpt_dir="$repo/tests/fixtures/fsdp/w4"
merged="$repo/out/fsdp-hf"
rm -rf "$merged"
mkdir -p "$repo/out"
echo "== $ckpt plan --dry-run --summary --local_dir $ckpt_dir"
"$ckpt" plan --dry-run --summary --local_dir "$ckpt_dir"
echo "== $ckpt merge --backend fsdp --local_dir $ckpt_dir --target_dir $merged"
"$ckpt" merge --backend fsdp --local_dir "$ckpt_dir" --target_dir "$merged"
echo "== $ckpt verify $merged --source --local_dir $ckpt_dir"
"$ckpt" verify "$merged" --source --local_dir "$ckpt_dir"

# A plain torch.save checkpoint (a tiny Qwen2-shaped model) converted the same way.
src="$repo/tests/fixtures/sample"
out="$repo/out/sample-hf"
rm -rf "$out"
echo "== $ckpt convert $src --target_dir $out   (--dtype auto: config.json asks for bfloat16)"
"$ckpt" convert "$src" --target_dir "$out"
echo "== $ckpt verify $out"
"$ckpt" verify "$out"
echo
echo "Merged    $ckpt_dir"
echo "       to $merged:"
ls -l "$merged"
echo "Converted $src"
echo "       to $out:"
ls -l "$out"
