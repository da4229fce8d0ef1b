#!/usr/bin/env bash
# The native torch.save writer (src/torch/torch_writer.h) against real torch: the unit test
# binary test_torch_writer writes its interop cases (every dtype, 0-d and empty tensors, a plain
# dict and an OrderedDict root, nested dicts, 1500 tensors, a 20 MiB tensor, odd key names) into
# $WORK/ours; tools/interop/check_torch_writer.py then torch.load(weights_only=True)s each file,
# compares every tensor, and checks that torch.save of the same object is byte-identical.
# Until `ckptstream convert --to torch` is wired, the writer is driven by the unit test binary,
# which sits next to the ckptstream binary's build tree (build/tests/test_torch_writer).
source "$(dirname "$0")/lib.sh"

UNIT="$(dirname "$CKPT")/tests/test_torch_writer"
if [ ! -x "$UNIT" ]; then
  echo "$TEST_NAME: no unit test binary at $UNIT (build test_torch_writer)" >&2
  exit 1
fi

mkdir -p "$WORK/ours"
log="$(logname write).log"
if ! CKPT_TORCH_WRITER_OUT="$WORK/ours" "$UNIT" --test-case="write interop cases" >"$log" 2>&1; then
  fail "test_torch_writer could not write the interop cases:"
  show "$log"
  finish
fi

log="$(logname check).log"
set +e
oracle check_torch_writer.py "$WORK/ours" "$WORK/torch" >"$log" 2>&1
rc=$?
set -e
while IFS= read -r line; do
  case "$line" in
    "ok "*) pass "${line#ok }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
  esac
done <"$log"
if [ "$rc" != 0 ] && ! grep -q '^FAIL ' "$log"; then
  fail "check_torch_writer.py exited $rc:"
  show "$log" 40
fi
grep -q '^ok ' "$log" || fail "no file was checked"
finish
