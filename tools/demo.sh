#!/usr/bin/env bash
# README command (1): on a Debian 12 machine, installs the build dependencies, builds ckptstream,
# converts the bundled sample checkpoint (tests/fixtures/sample: a tiny Qwen2-shaped model saved
# by torch) to safetensors in ./out/sample-hf, and verifies the result.
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
  build-essential cmake libboost-iostreams-dev libsimdjson-dev libzstd-dev libxxhash-dev \
  libcli11-dev doctest-dev

echo "== building in $build"
cmake -S "$repo" -B "$build" </dev/null
cmake --build "$build" --target ckptstream -j2 </dev/null
ckpt="$build/ckptstream"

src="$repo/tests/fixtures/sample"
out="$repo/out/sample-hf"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
echo "== $ckpt inspect $src"
"$ckpt" inspect "$src"
echo "== $ckpt convert $src --target_dir $out   (--dtype auto: config.json asks for bfloat16)"
"$ckpt" convert "$src" --target_dir "$out"
echo "== $ckpt verify $out"
"$ckpt" verify "$out"
echo
echo "Converted $src"
echo "       to $out:"
ls -l "$out"
