#!/usr/bin/env bash
# Every dtype torch can save and safetensors can hold, with NaN/inf/subnormal/tie edge values:
# convert with --dtype keep/bf16/fp16/fp32 and compare with torch (load_file + torch .to(),
# byte identity with safetensors.torch.save_file).
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" dtypes dtypes_extra
for dtype in keep bf16 fp16 fp32; do
  if convert_ok "dtypes-$dtype" "$WORK/out-$dtype" "$WORK/src/dtypes.pt" --dtype "$dtype"; then
    check "dtypes --dtype $dtype" --out "$WORK/out-$dtype" --dtype "$dtype" "$WORK/src/dtypes.pt"
    verify_ok "dtypes-$dtype" "$WORK/out-$dtype"
  fi
done
for dtype in keep bf16; do
  if convert_ok "extra-$dtype" "$WORK/extra-$dtype" "$WORK/src/dtypes_extra.pt" --dtype "$dtype"; then
    check "uint16/32/64, complex64, float8 fnuz --dtype $dtype" --out "$WORK/extra-$dtype" \
      --dtype "$dtype" "$WORK/src/dtypes_extra.pt"
    verify_ok "extra-$dtype" "$WORK/extra-$dtype"
  fi
done
finish
