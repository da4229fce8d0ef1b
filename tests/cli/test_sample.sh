#!/usr/bin/env bash
# The bundled sample (tests/fixtures/sample, a tiny Qwen2-shaped checkpoint saved by torch):
# convert gives the bytes safetensors.torch.save_file gave when the fixture was made, side
# files are copied, verify passes and catches a flipped byte, inspect --json is valid JSON.
source "$(dirname "$0")/lib.sh"

sample="$FIXTURES/sample"
for mode in auto keep bf16; do
  out="$WORK/out-$mode"
  run_ckpt "$WORK/convert-$mode" convert "$sample" --target_dir "$out" --dtype "$mode" --quiet
  if [ "$RC" != 0 ]; then
    fail "convert --dtype $mode exited $RC: $(head -c 400 "$WORK/convert-$mode.err")"; continue
  fi
  want=$(sample_sha256 "$mode")
  got=$(sha256sum "$out/model.safetensors" 2>/dev/null | cut -d' ' -f1 || true)
  if [ "$got" = "$want" ]; then pass "convert --dtype $mode: model.safetensors is byte-identical to safetensors.torch.save_file"
  else fail "convert --dtype $mode: model.safetensors sha256 $got, reference $want (files: $(ls "$out" | tr '\n' ' '))"; fi
  for f in config.json generation_config.json tokenizer_config.json; do
    cmp -s "$sample/$f" "$out/$f" || fail "convert --dtype $mode: side file $f not copied byte for byte"
  done
  [ ! -e "$out/model.safetensors.index.json" ] || fail "one shard, yet an index was written"
  [ ! -e "$out/pytorch_model.bin" ] || fail "the torch file was copied into the output"
  if python3 - "$out/ckptstream.manifest.json" "$HERE/sample.expected.json" <<'PY'
import json, re, sys
m = json.load(open(sys.argv[1])); exp = json.load(open(sys.argv[2]))
assert m["format"] == "ckptstream-manifest" and m["version"] == 2 and m["hash"] == "xxh3-128", m
assert list(m["files"]) == ["model.safetensors"], list(m["files"])
t = m["files"]["model.safetensors"]["tensors"]
assert set(t) == set(exp["tensors"]), sorted(set(t) ^ set(exp["tensors"]))
assert all(re.fullmatch("[0-9a-f]{32}", h["xxh3_128"]) for h in t.values())
assert sorted(m["other_files"]) == ["config.json", "generation_config.json",
                                    "tokenizer_config.json"], m["other_files"]
PY
  then pass "convert --dtype $mode: manifest lists every tensor"; else fail "convert --dtype $mode: bad manifest"; fi
done

out="$WORK/out-auto"
if [ -e "$out/model.safetensors" ]; then
  expect_rc 0 "verify of the converted sample" verify "$out"
  # the same conversion twice gives the same bytes
  run_ckpt "$WORK/again" convert "$sample" --target_dir "$WORK/again-out" --dtype auto --quiet
  cmp -s "$out/model.safetensors" "$WORK/again-out/model.safetensors" \
    && pass "conversion is deterministic" || fail "two conversions of the sample differ"
  cmp -s "$out/ckptstream.manifest.json" "$WORK/again-out/ckptstream.manifest.json" \
    || fail "two conversions of the sample give different manifests"
  # one flipped byte in a tensor: verify exits 1 and names the tensor
  cp -r "$out" "$WORK/tampered"
  tensor=$(python3 "$REPO/tools/interop/flip_tensor_byte.py" "$WORK/tampered/model.safetensors" \
           model.layers.1.mlp.up_proj.weight)
  run_ckpt "$WORK/verify-tampered" verify "$WORK/tampered"
  if [ "$RC" != 1 ]; then fail "verify after a flipped byte exited $RC, expected 1"
  elif ! grep -qF "$tensor" "$WORK/verify-tampered" "$WORK/verify-tampered.err"; then
    fail "verify after a flipped byte does not name $tensor: $(cat "$WORK/verify-tampered.err" | head -c 300)"
  else pass "verify after a flipped byte: exit 1 naming $tensor"; fi
fi

# the manifest's hashes are XXH3-128 of each tensor's bytes, as `xxhsum -H2` computes them
if command -v xxhsum >/dev/null && [ -e "$out/model.safetensors" ]; then
  if python3 - "$out" <<'PY'
import json, struct, subprocess, sys
out = sys.argv[1]
m = json.load(open(f"{out}/ckptstream.manifest.json"))
for fname, entry in m["files"].items():
    data = open(f"{out}/{fname}", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n]); header.pop("__metadata__", None)
    xxh = lambda b: subprocess.run(["xxhsum", "-H2", "-"], input=b, capture_output=True,
                                   check=True).stdout.split()[0].decode()
    if xxh(data[:8 + n]) != entry["header_xxh3_128"]:
        sys.exit(f"{fname}: header_xxh3_128 is not xxhsum -H2 of the header bytes")
    for name, info in header.items():
        b, e = info["data_offsets"]
        got = xxh(data[8 + n + b:8 + n + e])
        want = entry["tensors"][name]
        if got != want["xxh3_128"] or [info["dtype"], info["shape"], info["data_offsets"]] != \
                [want["dtype"], want["shape"], want["data_offsets"]]:
            sys.exit(f"{fname}: {name}: header {info}, xxhsum -H2 {got}; manifest {want}")
for other, entry in m["other_files"].items():
    data = open(f"{out}/{other}", "rb").read()
    got = subprocess.run(["xxhsum", "-H2", "-"], input=data, capture_output=True,
                         check=True).stdout.split()[0].decode()
    if got != entry["xxh3_128"] or len(data) != entry["size"]:
        sys.exit(f"{other}: xxhsum -H2 {got}, {len(data)} bytes; manifest {entry}")
PY
  then pass "manifest hashes equal xxhsum -H2 (XXH3-128) of every tensor, header and side file"
  else fail "manifest hashes are not XXH3-128 of the tensor bytes"; fi
else
  echo "note [$TEST_NAME]: xxhsum (Debian package xxhash) not installed: independent hash check skipped"
fi

# inspect --json: valid JSON naming every tensor (lm_head.weight included: it is in the file)
for target in "$sample" "$sample/pytorch_model.bin" "$out"; do
  run_ckpt "$WORK/inspect.json" inspect --json "$target"
  if [ "$RC" != 0 ]; then fail "inspect --json $target exited $RC: $(head -c 300 "$WORK/inspect.json.err")"; continue; fi
  if ! python3 -m json.tool "$WORK/inspect.json" >/dev/null 2>&1; then
    fail "inspect --json $target is not valid JSON: $(head -c 200 "$WORK/inspect.json")"; continue
  fi
  missing=$(python3 - "$WORK/inspect.json" "$HERE/sample.expected.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read(); exp = json.load(open(sys.argv[2]))
print(" ".join(n for n in exp["tensors"] if json.dumps(n) not in text))
PY
)
  [ -z "$missing" ] && pass "inspect --json $(basename "$target"): valid JSON listing every tensor" \
    || fail "inspect --json $target does not list: $missing"
done
run_ckpt "$WORK/inspect.txt" inspect "$sample/pytorch_model.bin"
[ "$RC" = 0 ] && grep -q "model.embed_tokens.weight" "$WORK/inspect.txt" \
  && pass "inspect (text) lists tensors" || fail "inspect (text) exited $RC or lists no tensor"
finish
