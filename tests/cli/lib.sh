# shellcheck shell=bash
# shellcheck disable=SC2034  # FIXTURES, REPO, HERE are used by the sourcing tests
# Shared helpers of the CLI tests (sourced, not run). Each test_*.sh is run by ctest as
#   bash test_X.sh <ckptstream-binary> <tests/fixtures dir>
# No torch here: expected results were computed by torch when the fixtures were made
# (tools/fixtures/make_sample.py -> tests/cli/sample.expected.json).
set -euo pipefail

CKPT=$(realpath "${1:?usage: $0 <ckptstream-binary> <fixtures-dir>}")
FIXTURES=$(realpath "${2:?usage: $0 <ckptstream-binary> <fixtures-dir>}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/ckptstream-cli-${TEST_NAME}.XXXXXX")
FAILURES=0
trap 'rm -rf "$WORK"' EXIT

fail() { echo "FAIL [$TEST_NAME]: $*" >&2; FAILURES=$((FAILURES + 1)); }
pass() { echo "ok   [$TEST_NAME]: $*"; }

# run_ckpt LOG ARGS... : runs ckptstream with no stdin; stdout to LOG, stderr to LOG.err; exit
# code in RC (never aborts the test).
run_ckpt() {
  local log=$1; shift
  set +e
  "$CKPT" "$@" >"$log" 2>"$log.err" </dev/null
  RC=$?
  set -e
}

# expect_rc WANT DESCRIPTION ARGS... : runs ckptstream ARGS and checks its exit code.
expect_rc() {
  local want=$1 what=$2; shift 2
  local log="$WORK/rc.$RANDOM"
  run_ckpt "$log" "$@"
  if [ "$RC" = "$want" ]; then
    pass "$what: exit $RC"
  else
    fail "$what: \`ckptstream $*\` exited $RC, expected $want; stderr: $(head -c 400 "$log.err")"
  fi
}

sample_sha256() {  # sample_sha256 auto|keep|bf16
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"][sys.argv[2]])' \
    "$HERE/sample.expected.json" "$1"
}

finish() {
  if [ "$FAILURES" != 0 ]; then echo "$TEST_NAME: $FAILURES failure(s)" >&2; exit 1; fi
  echo "$TEST_NAME: all passed"
}
