#!/usr/bin/env bash
# Builds (once) the real-torch oracle: a Debian chroot with python3-torch and python3-safetensors.
# Cached outside the repo; built in a temporary directory and renamed into place only after an
# import check passes, so a half-built chroot is never reused. See ../shared/oracle/README.md.
#   tools/setup-oracle.sh [trixie|sid]     prints the chroot path on its last line
set -euo pipefail
suite=${1:-trixie}
root=${CKPTSTREAM_ORACLE_ROOT:-/var/cache/ckptstream-oracle}
dest="$root-$suite"
pkgs=python3-torch,python3-safetensors,python3-numpy
# debootstrap does not resolve virtual packages: python3-zstandard needs python3-cffi-backend named.
[ "$suite" = sid ] && pkgs="$pkgs,python3-transformers,python3-zstandard,python3-cffi-backend"

if [ -x "$dest/usr/bin/python3" ]; then
  mountpoint -q "$dest/proc" || mount -t proc proc "$dest/proc"
  echo "$dest"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
tmp="$dest.tmp.$$"
build() {
  rm -rf "$tmp"
  mkdir -p "$(dirname "$tmp")"
  debootstrap --variant=minbase --include="$pkgs" "$suite" "$tmp" http://deb.debian.org/debian >"$tmp.log" 2>&1
}
build || { echo "debootstrap failed once, retrying (log: $tmp.log)" >&2; build; }
mkdir -p "$tmp/proc"
mount -t proc proc "$tmp/proc"
if ! chroot "$tmp" python3 -c 'import torch, safetensors, numpy' >/dev/null 2>&1; then
  umount "$tmp/proc" || true
  echo "oracle import check failed in $tmp" >&2
  exit 1
fi
umount "$tmp/proc"
mv "$tmp" "$dest"
rm -f "$tmp.log"
mount -t proc proc "$dest/proc"
echo "$dest"
