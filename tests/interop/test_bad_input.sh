#!/usr/bin/env bash
# Malformed torch files (made from real torch.save output, tools/interop/make_bad.py): convert
# and inspect exit 3 with a message naming the file, and leave nothing in the target directory.
source "$(dirname "$0")/lib.sh"

oracle "make_bad.py" "$WORK/bad"
for path in "$WORK"/bad/*.pt; do
  name=$(basename "$path" .pt)
  out="$WORK/out-$name"
  run_ckpt "$WORK/$name.log" convert "$path" --target_dir "$out" --quiet
  msg=$(head -c 600 "$WORK/$name.log" | tr '\n' ' ')
  left=$( [ -d "$out" ] && find "$out" -mindepth 1 | head -n 5 | tr '\n' ' ' || true)
  if [ "$RC" != 3 ]; then
    fail "convert $name.pt: exit $RC, expected 3 (bad input): $msg"
  elif ! grep -qF "$name.pt" "$WORK/$name.log"; then
    fail "convert $name.pt: the message does not name the file: $msg"
  elif [ -n "$left" ]; then
    fail "convert $name.pt: left files in the target: $left"
  else
    pass "convert $name.pt: exit 3, '$msg'"
  fi
  run_ckpt "$WORK/$name.inspect.log" inspect "$path"
  if [ "$RC" = 0 ] || [ "$RC" -ge 124 ]; then
    fail "inspect $name.pt: exit $RC, expected a clean error: $(head -c 300 "$WORK/$name.inspect.log")"
  fi
done

# a bad file among good ones: the whole conversion fails and writes nothing
oracle "make_cases.py" "$WORK/src" tied
mkdir -p "$WORK/mixed"
cp "$WORK/src/tied.pt" "$WORK/mixed/a.pt"
cp "$WORK/bad/truncated.pt" "$WORK/mixed/b.pt"
run_ckpt "$WORK/mixed.log" convert "$WORK/mixed" --target_dir "$WORK/out-mixed" --quiet
if [ "$RC" = 0 ]; then
  fail "convert of a directory holding one truncated file succeeded"
elif [ -d "$WORK/out-mixed" ] && [ -n "$(find "$WORK/out-mixed" -mindepth 1)" ]; then
  fail "convert of a directory holding one truncated file left: $(find "$WORK/out-mixed" -mindepth 1 | tr '\n' ' ')"
else
  pass "directory with one bad file: exit $RC, nothing written"
fi

# a target that already holds a model is not half-overwritten by a failing run
convert_ok good "$WORK/out-existing" "$WORK/src/tied.pt" --dtype keep || finish
before=$(cd "$WORK/out-existing" && sha256sum -- * | sort)
run_ckpt "$WORK/existing.log" convert "$WORK/bad/garbage.pt" --target_dir "$WORK/out-existing" --quiet
after=$(cd "$WORK/out-existing" && sha256sum -- * | sort)
if [ "$RC" = 0 ]; then fail "convert garbage.pt into an existing output succeeded"
elif [ "$before" != "$after" ]; then fail "a failed convert changed the existing output in the target"
else pass "failed convert into an existing target leaves it unchanged"; fi
finish
