#!/usr/bin/env bash
# Sharded output (--max-shard-size): huggingface_hub's greedy split, model-0000i-of-0000N names,
# model.safetensors.index.json consistent, each shard byte-identical to save_file of its tensors.
source "$(dirname "$0")/lib.sh"

oracle "make_cases.py" "$WORK/src" shardme hf_sharded
if convert_ok shard-5KB "$WORK/s5" "$WORK/src/shardme.pt" --dtype keep --max-shard-size 5KB; then
  check "--max-shard-size 5KB" --out "$WORK/s5" --dtype keep --max-shard-size 5000 "$WORK/src/shardme.pt"
  verify_ok shard-5KB "$WORK/s5"
fi
if convert_ok shard-bf16 "$WORK/sb" "$WORK/src/shardme.pt" --dtype bf16 --max-shard-size 3KB; then
  check "--max-shard-size 3KB --dtype bf16" --out "$WORK/sb" --dtype bf16 --max-shard-size 3000 "$WORK/src/shardme.pt"
  verify_ok shard-bf16 "$WORK/sb"
fi
if convert_ok shard-kib "$WORK/sk" "$WORK/src/shardme.pt" --dtype keep --max-shard-size 8KiB; then
  check "--max-shard-size 8KiB" --out "$WORK/sk" --dtype keep --max-shard-size 8192 "$WORK/src/shardme.pt"
fi
if convert_ok shard-one "$WORK/s1" "$WORK/src/shardme.pt" --dtype keep --max-shard-size 1MB; then
  check "everything in one shard: model.safetensors, no index" --out "$WORK/s1" --dtype keep \
    --max-shard-size 1000000 "$WORK/src/shardme.pt"
fi
if convert_ok hf-resharded "$WORK/hr" "$WORK/src/hf_sharded" --dtype keep --max-shard-size 4KB; then
  check "HF sharded .bin resharded at 4KB" --side-files --out "$WORK/hr" --dtype keep \
    --max-shard-size 4000 "$WORK/src/hf_sharded"
  verify_ok hf-resharded "$WORK/hr"
fi
finish
