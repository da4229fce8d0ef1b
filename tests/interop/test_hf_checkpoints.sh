#!/usr/bin/env bash
# Hugging Face checkpoint directories: sharded pytorch_model-0000i-of-0000N.bin + index, side
# files copied byte for byte, --dtype auto from config.json; a plain directory of torch files;
# and the bundled sample (tied embeddings, config asks for bfloat16).
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" hf_sharded parameter
if convert_ok hf-auto "$WORK/hf-auto" "$WORK/src/hf_sharded" --dtype auto; then
  check "HF sharded .bin, --dtype auto (config: float32)" --side-files --out "$WORK/hf-auto" \
    --dtype keep "$WORK/src/hf_sharded"
  verify_ok hf-auto "$WORK/hf-auto"
fi
if convert_ok hf-bf16 "$WORK/hf-bf16" "$WORK/src/hf_sharded" --dtype bf16; then
  check "HF sharded .bin, --dtype bf16" --side-files --out "$WORK/hf-bf16" --dtype bf16 "$WORK/src/hf_sharded"
fi
if convert_ok hf-fp16cfg "$WORK/hf-fp16cfg" "$WORK/src/hf_single_fp16cfg" --dtype auto; then
  check "dir with config torch_dtype float16, --dtype auto" --side-files --out "$WORK/hf-fp16cfg" \
    --dtype fp16 "$WORK/src/hf_single_fp16cfg"
fi
if convert_ok hf-file-auto "$WORK/hf-file-auto" "$WORK/src/hf_single_fp16cfg/pytorch_model.bin" --dtype auto; then
  check "file next to config torch_dtype float16, --dtype auto" --side-files --out "$WORK/hf-file-auto" \
    --dtype fp16 "$WORK/src/hf_single_fp16cfg/pytorch_model.bin"
fi
mkdir -p "$WORK/src/plain_dir"
cp "$WORK/src/parameter.pt" "$WORK/src/module_state_dict.pt" "$WORK/src/plain_dir/"
if convert_ok plain-dir "$WORK/plain-dir" "$WORK/src/plain_dir" --dtype keep; then
  check "directory of torch files" --out "$WORK/plain-dir" --dtype keep "$WORK/src/plain_dir"
fi
# the bundled sample
sample="$REPO/tests/fixtures/sample"
cp -r "$sample" "$WORK/sample"
if convert_ok sample-auto "$WORK/sample-auto" "$WORK/sample" --dtype auto; then
  check "bundled sample, --dtype auto (config: bfloat16)" --side-files --out "$WORK/sample-auto" \
    --dtype bf16 "$WORK/sample"
  verify_ok sample-auto "$WORK/sample-auto"
fi
if convert_ok sample-keep "$WORK/sample-keep" "$WORK/sample/pytorch_model.bin" --dtype keep; then
  check "bundled sample, --dtype keep" --side-files --out "$WORK/sample-keep" --dtype keep \
    "$WORK/sample/pytorch_model.bin"
fi
finish
