#!/usr/bin/env bash
# Views (storage offsets, strides, transposes, stride 0, storages larger than the view), shared
# storages, aliases and tied embeddings, nn.Parameter and module state dicts, nested containers.
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" views shared tied parameter nested
for name in views shared tied parameter module_state_dict nested nested_scalars; do
  if convert_ok "$name" "$WORK/out-$name" "$WORK/src/$name.pt" --dtype keep; then
    check "$name" --out "$WORK/out-$name" --dtype keep "$WORK/src/$name.pt"
    verify_ok "$name" "$WORK/out-$name"
  fi
done
if convert_ok views-bf16 "$WORK/views-bf16" "$WORK/src/views.pt" --dtype bf16; then
  check "views --dtype bf16" --out "$WORK/views-bf16" --dtype bf16 "$WORK/src/views.pt"
fi
# several source files in one conversion
if convert_ok multi "$WORK/multi" "$WORK/src/parameter.pt" "$WORK/src/nested.pt" --dtype keep; then
  check "two source files" --out "$WORK/multi" --dtype keep "$WORK/src/parameter.pt" "$WORK/src/nested.pt"
fi
# inspect lists every tensor torch sees
for name in views shared tied nested; do
  run_ckpt "$WORK/inspect-$name.json" inspect --json "$WORK/src/$name.pt"
  if [ "$RC" != 0 ]; then
    fail "inspect --json $name.pt exited $RC"; show "$WORK/inspect-$name.json" 20
  elif oracle "check_inspect.py" "$WORK/inspect-$name.json" "$WORK/src/$name.pt" \
      >"$WORK/inspect-$name.log" 2>&1; then
    pass "inspect $name: $(tail -n 1 "$WORK/inspect-$name.log")"
  else
    fail "inspect $name:"; show "$WORK/inspect-$name.log" 20
  fi
done
finish
