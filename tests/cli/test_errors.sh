#!/usr/bin/env bash
# Input errors: a clear message naming the path, a non-zero exit, nothing in the target.
source "$(dirname "$0")/lib.sh"

# expect_input_error NAME MUST_MENTION ARGS... : convert must fail (not crash), name the path,
# and leave no file in the target directory $WORK/out-NAME.
expect_input_error() {
  local name=$1 mention=$2; shift 2
  local out="$WORK/out-$name"
  local log="$WORK/log-$name"
  run_ckpt "$log" convert "$@" --target_dir "$out" --quiet
  local msg; msg=$(cat "$log" "$log.err" | head -c 400 | tr '\n' ' ')
  if [ "$RC" = 0 ] || [ "$RC" -ge 124 ]; then fail "$name: exit $RC, expected an error: $msg"
  elif ! grep -qF -- "$mention" "$log" "$log.err"; then fail "$name: message does not name $mention: $msg"
  elif [ -d "$out" ] && [ -n "$(find "$out" -mindepth 1)" ]; then fail "$name: left $(find "$out" -mindepth 1 | tr '\n' ' ')"
  else pass "$name: exit $RC, '$msg'"; fi
}

expect_input_error nonexistent "$WORK/no/such/checkpoint.bin" "$WORK/no/such/checkpoint.bin"
mkdir -p "$WORK/empty-dir"
expect_input_error empty-dir "$WORK/empty-dir" "$WORK/empty-dir"
printf 'not a checkpoint at all\n' >"$WORK/notes.pt"
expect_input_error text-file "notes.pt" "$WORK/notes.pt"
head -c 1000 "$FIXTURES/sample/pytorch_model.bin" >"$WORK/cut.bin"
expect_input_error truncated "cut.bin" "$WORK/cut.bin"

# exit codes: 3 for bad input
run_ckpt "$WORK/rc3" convert "$WORK/notes.pt" --target_dir "$WORK/rc3-out" --quiet
[ "$RC" = 3 ] && pass "garbage input exits 3" || fail "garbage input exits $RC, expected 3"
run_ckpt "$WORK/inspect-missing" inspect "$WORK/missing.pt"
{ [ "$RC" != 0 ] && [ "$RC" -lt 124 ] && grep -qF "missing.pt" "$WORK/inspect-missing.err" "$WORK/inspect-missing"; } \
  && pass "inspect of a missing file: exit $RC naming it" || fail "inspect of a missing file: exit $RC"
run_ckpt "$WORK/verify-empty" verify "$WORK/empty-dir"
{ [ "$RC" != 0 ] && [ "$RC" -lt 124 ]; } && pass "verify of a directory with no output: exit $RC" \
  || fail "verify of an empty directory exited $RC"

# a target path that is a file: an I/O error (4), the file untouched
printf 'keep me\n' >"$WORK/target-file"
run_ckpt "$WORK/target-is-file" convert "$FIXTURES/sample" --target_dir "$WORK/target-file" --quiet
if [ "$RC" = 0 ]; then fail "convert into a --target_dir that is a regular file succeeded"
elif [ "$(cat "$WORK/target-file")" != "keep me" ]; then fail "convert overwrote the regular file given as --target_dir"
else pass "--target_dir naming a regular file: exit $RC"; fi
finish
