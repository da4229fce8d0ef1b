#!/usr/bin/env bash
# `convert --to torch` of DCP checkpoints (issue 4) against torch's own dcp_to_torch_save: same
# model tensors, same key order, torch.load(weights_only=True) accepts our file.
source "$(dirname "$0")/lib.sh"
DCP="$REPO/tests/fixtures/dcp"

check_case() {  # check_case CASE PREFIX
  local case=$1 prefix=$2
  cp -r "$DCP/$case" "$WORK/$case"
  run_ckpt "$(logname "convert $case")" convert --to torch "$WORK/$case" --target-file \
    "$WORK/$case.pt"
  if [ "$RC" != 0 ]; then
    fail "convert --to torch $case: exit $RC"; show "$(logname "convert $case")"; return
  fi
  local log
  log=$(logname "check $case")
  if oracle check_dcp_to_torch.py "$WORK/$case" "$WORK/$case.pt" "$prefix" >"$log" 2>&1; then
    pass "$case: $(tail -n 1 "$log")"
  else
    fail "$case: torch disagrees"; show "$log"
  fi
}

check_case nested_w2 model
check_case app_w3_bf16 app.model
check_case plain ""
[ "$FAILURES" = 0 ] || exit 1
echo "$TEST_NAME: all passed"
