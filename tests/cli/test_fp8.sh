#!/usr/bin/env bash
# Block-quantized FP8 Hugging Face models (issue 15), on a DeepSeek-V3-shaped model quantized by
# torch (tools/fixtures/make_fp8_fixtures.py: float8_e4m3fn weights, float32 *_scale_inv per
# 12 x 20 block, partial edge blocks in both dimensions) and torch's dequantized reference:
# `convert --dtype bf16` and `convert --to megatron` dequantize bit for bit as torch does; the
# scales never reach the output, config.json loses quantization_config; --dtype keep passes FP8
# through; missing scales and wrong grids are refused, writing nothing.
source "$(dirname "$0")/lib.sh"
FP8="$FIXTURES/fp8/deepseek_v3_fp8"
REF="$FIXTURES/fp8/deepseek_v3_fp8_bf16"

expect_rc 0 "convert --dtype bf16" convert "$FP8" --target_dir "$WORK/bf16" --dtype bf16
expect_rc 0 "dequantized values equal torch's, exactly" verify "$WORK/bf16" --reference "$REF"
python3 - "$WORK/bf16" <<'PY' && pass "no scale written; config.json without quantization_config, the rest kept" || fail "config or scales"
import json, struct, sys
out = sys.argv[1]
data = open(out + "/model.safetensors", "rb").read()
header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
assert not any(k.endswith("_scale_inv") for k in header), "a scale was written"
assert not any(v["dtype"].startswith("F8") for k, v in header.items() if k != "__metadata__")
config = json.load(open(out + "/config.json"))
assert "quantization_config" not in config and config["model_type"] == "deepseek_v3"
PY
expect_rc 0 "convert --dtype auto (config.json's bfloat16)" convert "$FP8" --target_dir "$WORK/auto"
cmp -s "$WORK/auto/model.safetensors" "$WORK/bf16/model.safetensors" &&
  pass "--dtype auto dequantizes to bfloat16 too" || fail "--dtype auto differs from bf16"
expect_rc 0 "convert --dtype keep" convert "$FP8" --target_dir "$WORK/keep" --dtype keep
expect_rc 0 "--dtype keep passes FP8 weights and scales through" verify "$WORK/keep" \
  --reference "$FP8"
cmp -s "$WORK/keep/config.json" "$FP8/config.json" && pass "--dtype keep: config.json as it was" ||
  fail "--dtype keep changed config.json"

# Inside convert --to megatron: a checkpoint without scales, which merges back to the reference.
for format in torch_dist torch; do
  expect_rc 0 "--to megatron --format $format" convert --to megatron "$FP8" --target_dir \
    "$WORK/meg-$format" --ep 2 --format "$format" --make-vocab-size-divisible-by 1
  expect_rc 0 "merge back ($format)" merge --local_dir "$WORK/meg-$format" --hf-config "$REF" \
    --target_dir "$WORK/meg-$format-hf"
  expect_rc 0 "$format: equal to torch's dequantized model" verify "$WORK/meg-$format-hf" \
    --reference "$REF"
done

# Safetensors directories in general: resharded, cast.
QWEN="$FIXTURES/megatron/qwen2_tp2_dist/hf"
expect_rc 0 "a safetensors model resharded" convert "$QWEN" --target_dir "$WORK/reshard" \
  --max-shard-size 20KB
[ -f "$WORK/reshard/model.safetensors.index.json" ] && cmp -s "$WORK/reshard/config.json" \
  "$QWEN/config.json" && pass "resharded with an index, config.json copied byte for byte" ||
  fail "reshard: $(ls "$WORK/reshard")"
expect_rc 0 "resharded model equals its source" verify "$WORK/reshard" --reference "$QWEN"
expect_rc 0 "a safetensors model cast to fp32" convert "$QWEN" --target_dir "$WORK/fp32" \
  --dtype fp32
expect_rc 0 "and back to bf16" convert "$WORK/fp32" --target_dir "$WORK/back" --dtype bf16
expect_rc 0 "bf16 -> fp32 -> bf16 is exact" verify "$WORK/back" --reference "$QWEN"

# A scale missing (the file rewritten without it), a scale grid that the block size contradicts.
mkdir -p "$WORK/noscale"
cp "$FP8/config.json" "$WORK/noscale/"
python3 - "$FP8/model.safetensors" "$WORK/noscale/model.safetensors" <<'PY'
import json, struct, sys
src = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", src[:8])[0]
header = json.loads(src[8:8 + n])
meta = header.pop("__metadata__", None)
del header["model.layers.0.mlp.down_proj.weight_scale_inv"]
data, out = b"", {}
for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    begin, end = entry["data_offsets"]
    out[name] = dict(entry, data_offsets=[len(data), len(data) + end - begin])
    data += src[8 + n + begin:8 + n + end]
if meta is not None:
    out["__metadata__"] = meta
text = json.dumps(out).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + data)
PY
cp -r "$FP8" "$WORK/grid"
sed -i 's/"weight_block_size": \[/"weight_block_size": [16, 16], "x": [/' "$WORK/grid/config.json"
for to in safetensors megatron; do
  run_ckpt "$WORK/noscale.log" convert --to "$to" "$WORK/noscale" --target_dir "$WORK/out-noscale"
  [ "$RC" = 3 ] && grep -q "model.layers.0.mlp.down_proj.weight' has no" "$WORK/noscale.log.err" &&
    [ ! -e "$WORK/out-noscale" ] && pass "--to $to: a missing scale is refused, naming the weight" ||
    fail "--to $to missing scale: exit $RC: $(head -c 300 "$WORK/noscale.log.err")"
  run_ckpt "$WORK/grid.log" convert --to "$to" "$WORK/grid" --target_dir "$WORK/out-grid"
  [ "$RC" = 3 ] && grep -q "blocks of 16 x 16 (weight_block_size) need" "$WORK/grid.log.err" &&
    [ ! -e "$WORK/out-grid" ] && pass "--to $to: a scale grid the block size contradicts is refused" ||
    fail "--to $to wrong grid: exit $RC: $(head -c 300 "$WORK/grid.log.err")"
done
finish
