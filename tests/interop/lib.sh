# shellcheck shell=bash
# Shared helpers of the interop tests (sourced, not run). Each test_*.sh is run by ctest as
#   bash test_X.sh <path-to-ckptstream-binary>
# and uses real torch through the oracle chroot (tools/oracle-run.sh; needs root).
set -euo pipefail

CKPT=$(realpath "${1:?usage: $0 <path-to-ckptstream-binary>}")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/ckptstream-${TEST_NAME}.XXXXXX")
FAILURES=0
ORACLE_ROOT="${CKPTSTREAM_ORACLE_ROOT:-/var/cache/ckptstream-oracle}-trixie"
# oracle-run.sh leaves the (unmounted, empty) mount point of $WORK inside the chroot: remove it.
cleanup() { rm -rf "$WORK"; rmdir "$ORACLE_ROOT$WORK" 2>/dev/null || true; }
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "$TEST_NAME: the oracle needs root (chroot, bind mounts)" >&2; exit 1; }
[ -x "$CKPT" ] || { echo "$TEST_NAME: no ckptstream binary at $CKPT" >&2; exit 1; }

# The Python helpers run from a private copy, and only $WORK is bind-mounted into the chroot
# (not the repo): mount points shared with other concurrent oracle users could be unmounted
# under a running test.
PY="$WORK/py"
cp -r "$REPO/tools/interop" "$PY"
# oracle SCRIPT.py ARGS... : python3 $PY/SCRIPT.py under real torch, in $WORK.
# A failed generator (make_*.py) is run once more: torch's multi-process (gloo) generators now
# and then abort in a child at teardown on a loaded machine ("terminate called without an active
# exception"); one that fails for a reason of its own fails twice. Checks are never re-run.
oracle() {
  local script=$1; shift
  (cd "$WORK" && "$REPO/tools/oracle-run.sh" --bind "$WORK" -- python3 "$PY/$script" "$@") && return 0
  case "$script" in make_*) ;; *) return 1 ;; esac
  echo "note [$TEST_NAME]: $script failed; running it once more" >&2
  (cd "$WORK" && "$REPO/tools/oracle-run.sh" --bind "$WORK" -- python3 "$PY/$script" "$@")
}

fail() { echo "FAIL [$TEST_NAME]: $*" >&2; FAILURES=$((FAILURES + 1)); }
pass() { echo "ok   [$TEST_NAME]: $*"; }
# logname TEXT : a file name under $WORK for a log about TEXT.
logname() { printf '%s/%s' "$WORK" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9_.-' '_')"; }
# show FILE : the first lines of a log, indented, on stderr.
show() { sed 's/^/    /' "$1" 2>/dev/null | head -n "${2:-30}" >&2 || true; }

# run_ckpt LOG ARGS... : runs ckptstream, stdout+stderr to LOG; sets RC (never aborts the test).
run_ckpt() {
  local log=$1; shift
  set +e
  "$CKPT" "$@" >"$log" 2>&1
  RC=$?
  set -e
}

# convert_ok NAME OUT ARGS... : converts, failing the test (with ckptstream's output) on rc != 0.
convert_ok() {
  local name=$1 out=$2; shift 2
  local log; log="$(logname "$name").convert.log"
  run_ckpt "$log" convert "$@" --target_dir "$out" --quiet
  if [ "$RC" != 0 ]; then
    fail "$name: ckptstream convert $* --target_dir $out exited $RC:"
    show "$log"
    return 1
  fi
}

# check NAME ARGS... : runs tools/interop/check_output.py under the oracle.
check() {
  local name=$1; shift
  local log; log="$(logname "$name").check.log"
  if oracle check_output.py "$@" >"$log" 2>&1; then
    pass "$name: $(tail -n 1 "$log")"
  else
    fail "$name: torch disagrees with the output:"
    show "$log" 40
  fi
}

# verify_ok NAME OUT : `ckptstream verify OUT` must exit 0.
verify_ok() {
  local log; log="$(logname "$1").verify.log"
  run_ckpt "$log" verify "$2"
  if [ "$RC" = 0 ]; then pass "$1: verify passes"; else
    fail "$1: ckptstream verify $2 exited $RC:"; show "$log" 20
  fi
}

finish() {
  if [ "$FAILURES" != 0 ]; then
    echo "$TEST_NAME: $FAILURES failure(s)" >&2
    exit 1
  fi
  echo "$TEST_NAME: all passed"
}
