#!/usr/bin/env bash
# README command (2), and what .ci/run runs: on a Debian 12 machine, installs the build and test
# dependencies, builds the real-torch oracle (tools/setup-oracle.sh: a Debian trixie chroot with
# python3-torch and python3-safetensors, cached in /var/cache and reused), builds ckptstream and
# its tests, and runs every test (unit, CLI, interop) with ctest. Needs root (apt-get, chroot,
# bind mounts): re-runs itself with sudo when started by another user.
#   tools/test-all.sh            build dir: ./build (CKPTSTREAM_BUILD_DIR overrides)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=CKPTSTREAM_BUILD_DIR,CKPTSTREAM_ORACLE_ROOT "$0" "$@"
fi
build=${CKPTSTREAM_BUILD_DIR:-$repo/build}

echo "== installing Debian packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null
apt-get install -y -q --no-install-recommends </dev/null \
  build-essential cmake libboost-iostreams-dev libsimdjson-dev libzstd-dev libxxhash-dev libdeflate-dev \
  libcli11-dev doctest-dev debootstrap python3 time xxhash openmpi-bin

echo "== real-torch oracles (first run: debootstrap, a few minutes each)"
"$repo/tools/setup-oracle.sh" trixie </dev/null  # torch 2.6 + safetensors
"$repo/tools/setup-oracle.sh" sid </dev/null     # torch 2.14 + transformers 5 (MoE load checks)

echo "== building in $build"
cmake -S "$repo" -B "$build" </dev/null
cmake --build "$build" -j2 </dev/null

echo "== running every test"
cd "$build"
exec ctest --output-on-failure </dev/null
