#!/usr/bin/env bash
# Container formats: the legacy (non-zip) torch.save format, pickle protocols 1-5, and a zip
# with more than 65535 records (zip64 central directory).
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" legacy protocols zip64
for name in legacy legacy_p4 proto1 proto2 proto3 proto4 proto5 zip64; do
  if convert_ok "$name" "$WORK/out-$name" "$WORK/src/$name.pt" --dtype keep; then
    check "$name" --out "$WORK/out-$name" --dtype keep "$WORK/src/$name.pt"
    verify_ok "$name" "$WORK/out-$name"
  fi
done
if convert_ok legacy-bf16 "$WORK/legacy-bf16" "$WORK/src/legacy.pt" --dtype bf16; then
  check "legacy --dtype bf16" --out "$WORK/legacy-bf16" --dtype bf16 "$WORK/src/legacy.pt"
fi
finish
