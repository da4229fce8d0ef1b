#!/usr/bin/env bash
# `ckptstream verify`: passes on fresh output, fails (naming the tensor or file) after damage:
# one flipped data byte (exit 1), a damaged index, a truncated shard, a header-length bomb,
# an edited manifest.
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" dtypes shardme
convert_ok single "$WORK/single" "$WORK/src/dtypes.pt" --dtype keep || finish
convert_ok sharded "$WORK/sharded" "$WORK/src/shardme.pt" --dtype keep --max-shard-size 5KB || finish
verify_ok single "$WORK/single"
verify_ok sharded "$WORK/sharded"

flip="$PY/flip_tensor_byte.py"
# expect_fail NAME DIR WANT_RC MUST_MENTION : verify DIR must fail with WANT_RC ("any" = any
# non-zero code that is not a crash) and print MUST_MENTION.
expect_fail() {
  local name=$1 dir=$2 want=$3 mention=$4
  run_ckpt "$WORK/$name.log" verify "$dir"
  if [ "$RC" = 0 ]; then
    fail "$name: verify passed on damaged output"
  elif [ "$want" != any ] && [ "$RC" != "$want" ]; then
    fail "$name: verify exited $RC, expected $want:"; show "$WORK/$name.log" 10
  elif [ "$RC" -ge 124 ]; then
    fail "$name: verify crashed or was killed (exit $RC):"; show "$WORK/$name.log" 10
  elif ! grep -qF -- "$mention" "$WORK/$name.log"; then
    fail "$name: verify exited $RC but did not name '$mention':"; show "$WORK/$name.log" 10
  else
    pass "$name: verify exits $RC and names $mention"
  fi
}

# one flipped byte in each of several tensors (every dtype region), one at a time
for tensor in f32 bf16 i8 bool big_f32; do
  rm -rf "$WORK/t" && cp -r "$WORK/single" "$WORK/t"
  python3 "$flip" "$WORK/t/model.safetensors" "$tensor" >/dev/null
  expect_fail "flip-$tensor" "$WORK/t" 1 "$tensor"
done

# a flipped byte in the second shard
rm -rf "$WORK/t" && cp -r "$WORK/sharded" "$WORK/t"
tensor=$(python3 "$flip" "$WORK/t/model-00002-of-"*.safetensors)
expect_fail flip-shard "$WORK/t" 1 "$tensor"

# index entry removed: the tensor is in a shard but not in the index
rm -rf "$WORK/t" && cp -r "$WORK/sharded" "$WORK/t"
python3 - "$WORK/t/model.safetensors.index.json" <<'PY'
import json, sys
p = sys.argv[1]; idx = json.load(open(p)); idx["weight_map"].pop("layer.0.weight")
json.dump(idx, open(p, "w"), indent=2)
PY
expect_fail index-entry-removed "$WORK/t" any "layer.0.weight"

# index points a tensor to the wrong shard
rm -rf "$WORK/t" && cp -r "$WORK/sharded" "$WORK/t"
python3 - "$WORK/t/model.safetensors.index.json" <<'PY'
import json, sys
p = sys.argv[1]; idx = json.load(open(p)); wm = idx["weight_map"]
files = sorted(set(wm.values())); wm["ids"] = files[0] if wm["ids"] != files[0] else files[1]
json.dump(idx, open(p, "w"), indent=2)
PY
expect_fail index-wrong-file "$WORK/t" any "ids"

# index total_size wrong
rm -rf "$WORK/t" && cp -r "$WORK/sharded" "$WORK/t"
python3 - "$WORK/t/model.safetensors.index.json" <<'PY'
import json, sys
p = sys.argv[1]; idx = json.load(open(p)); idx["metadata"]["total_size"] += 4
json.dump(idx, open(p, "w"), indent=2)
PY
expect_fail index-total-size "$WORK/t" any "total_size"

# truncated file
rm -rf "$WORK/t" && cp -r "$WORK/single" "$WORK/t"
truncate -s -1 "$WORK/t/model.safetensors"
expect_fail truncated "$WORK/t" any "model.safetensors"

# a shard deleted
rm -rf "$WORK/t" && cp -r "$WORK/sharded" "$WORK/t"
rm "$WORK/t/model-00001-of-"*.safetensors
expect_fail shard-missing "$WORK/t" any "model-00001-of-"

# header-length bomb: N = 2^60
rm -rf "$WORK/t" && cp -r "$WORK/single" "$WORK/t"
printf '\x00\x00\x00\x00\x00\x00\x00\x10' | dd of="$WORK/t/model.safetensors" bs=1 seek=0 conv=notrunc status=none
expect_fail header-bomb "$WORK/t" any "model.safetensors"

# manifest hash edited
rm -rf "$WORK/t" && cp -r "$WORK/single" "$WORK/t"
python3 - "$WORK/t/ckptstream.manifest.json" <<'PY'
import json, sys
p = sys.argv[1]; m = json.load(open(p)); t = m["files"]["model.safetensors"]["tensors"]
h = t["i16"]["xxh3_128"]; t["i16"]["xxh3_128"] = ("0" if h[0] != "0" else "1") + h[1:]
json.dump(m, open(p, "w"), indent=2)
PY
expect_fail manifest-edited "$WORK/t" 1 "i16"

# a damaged copy must not have touched the original
verify_ok single-again "$WORK/single"
finish
