#!/usr/bin/env bash
# Runs a command inside the oracle chroot with the given host directories bind-mounted at the
# same absolute paths, so paths need no translation. Builds the oracle first if needed. Each run
# gets a private mount namespace (unshare -m): concurrent runs never unmount each other's binds,
# and the binds vanish when the command exits.
#   tools/oracle-run.sh [--suite trixie|sid] --bind DIR [--bind DIR...] -- COMMAND ARGS...
# Example: tools/oracle-run.sh --bind "$PWD" --bind /tmp/x -- python3 tools/fixtures/make.py /tmp/x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=trixie
binds=()
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --bind) binds+=("$(realpath "$2")"); shift 2 ;;
    --) shift; break ;;
    *) echo "oracle-run: unknown argument $1" >&2; exit 2 ;;
  esac
done
root=$("$here/setup-oracle.sh" "$suite" | tail -n 1)
for dir in "${binds[@]}"; do mkdir -p "$root$dir"; done
cwd=$(pwd)
[ -d "$root$cwd" ] || cwd=/
# Torch would otherwise start one thread per core and warn about missing accelerators.
exec unshare -m --propagation private /bin/bash -c '
  set -e
  root=$1; cwd=$2; shift 2
  while [ "$1" != "--" ]; do mount --bind "$1" "$root$1"; shift; done
  shift
  exec chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo PYTHONDONTWRITEBYTECODE=1 \
    sh -c "cd \"\$1\" && shift && exec \"\$@\"" sh "$cwd" "$@"
' oracle-run "$root" "$cwd" "${binds[@]}" -- "$@"
