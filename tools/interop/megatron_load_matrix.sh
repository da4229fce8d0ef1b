#!/usr/bin/env bash
# Writes Megatron checkpoints with `convert --to megatron` from the Hugging Face references of
# the real megatron-core fixtures and loads each into real megatron-core models
# (load_megatron_checkpoint.py), in the layout written and, for torch_dist, in another one
# (megatron-core reshards). A developer's check (minutes; needs the sid oracle with megatron-core
# and mbridge, ../shared/oracle/megatron.md), not a CI test. Prints one line per case.
#   tools/interop/megatron_load_matrix.sh BUILD/ckptstream WORK_DIR [case-name ...]
set -uo pipefail
ckpt=$(realpath "$1"); work=$(realpath -m "$2"); shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
M="$repo/tests/fixtures/megatron"
mkdir -p "$work"
# name | fixture whose hf/ is the source | convert flags | load case (JSON) | vocab divisor
cases=(
  "qwen2-tp2|qwen2_tp2_dist|--tp 2|{\"family\":\"qwen2\",\"fmt\":\"torch_dist\",\"tp\":2}|16"
  "qwen2-tp2-as-tp1|qwen2_tp2_dist|--tp 2|{\"family\":\"qwen2\",\"fmt\":\"torch_dist\"}|16"
  "qwen2-tp1-as-tp2pp2|qwen2_tp2_dist||{\"family\":\"qwen2\",\"fmt\":\"torch_dist\",\"tp\":2,\"pp\":2}|16"
  "qwen2-legacy-tp2|qwen2_tp2_dist|--tp 2 --format torch|{\"family\":\"qwen2\",\"fmt\":\"torch\",\"tp\":2}|16"
  "qwen3-pp2vpp2|qwen3_pp2vpp2_dist|--pp 2 --vpp 2|{\"family\":\"qwen3\",\"fmt\":\"torch_dist\",\"pp\":2,\"vpp\":2}|16"
  "qwen3-pp2vpp2-as-tp2|qwen3_pp2vpp2_dist|--pp 2 --vpp 2|{\"family\":\"qwen3\",\"fmt\":\"torch_dist\",\"tp\":2}|16"
  "qwen3-legacy-pp2vpp2|qwen3_pp2vpp2_dist|--pp 2 --vpp 2 --format torch|{\"family\":\"qwen3\",\"fmt\":\"torch\",\"pp\":2,\"vpp\":2}|16"
  "qwen3-tied-tp4|qwen3_tp4_dist|--tp 4|{\"family\":\"qwen3\",\"fmt\":\"torch_dist\",\"tp\":4}|16"
  "llama-tp2pp2-uneven|llama_tp2pp2_uneven_dist|--tp 2 --pp 2 --first-stage-layers 1|{\"family\":\"llama\",\"fmt\":\"torch_dist\",\"tp\":2,\"pp\":2,\"first_stage_layers\":1}|16"
  "llama-legacy-tp2pp2-uneven|llama_tp2pp2_uneven_dist|--tp 2 --pp 2 --first-stage-layers 1 --format torch|{\"family\":\"llama\",\"fmt\":\"torch\",\"tp\":2,\"pp\":2,\"first_stage_layers\":1}|16"
  "qwen3moe-ep2|qwen3moe_ep2_dist|--ep 2|{\"family\":\"qwen3_moe\",\"fmt\":\"torch_dist\",\"ep\":2}|16"
  "qwen3moe-ep2-as-ep1|qwen3moe_ep2_dist|--ep 2|{\"family\":\"qwen3_moe\",\"fmt\":\"torch_dist\"}|16"
  "qwen3moe-legacy-ep2|qwen3moe_ep2_dist|--ep 2 --format torch|{\"family\":\"qwen3_moe\",\"fmt\":\"torch\",\"ep\":2}|16"
  "qwen3moe-legacy-tp2etp2|qwen3moe_ep2_dist|--tp 2 --etp 2 --format torch|{\"family\":\"qwen3_moe\",\"fmt\":\"torch\",\"tp\":2,\"etp\":2}|16"
  "mixtral-tp2ep2|mixtral_tp2ep2_dist|--tp 2 --ep 2|{\"family\":\"mixtral\",\"fmt\":\"torch_dist\",\"tp\":2,\"ep\":2}|16"
  "mixtral-legacy-tp2ep2|mixtral_tp2ep2_dist|--tp 2 --ep 2 --format torch|{\"family\":\"mixtral\",\"fmt\":\"torch\",\"tp\":2,\"ep\":2}|16"
  "qwen2moe-tp2|qwen2moe_tp2_dist|--tp 2|{\"family\":\"qwen2_moe\",\"fmt\":\"torch_dist\",\"tp\":2}|16"
  "deepseek-ep2|deepseek_v3_mtp_ep2_dist|--ep 2|{\"family\":\"deepseek_v3\",\"fmt\":\"torch_dist\",\"ep\":2}|1"
  "deepseek-legacy-pp2|deepseek_v3_mtp_pp2_legacy|--pp 2 --first-stage-layers 1 --format torch|{\"family\":\"deepseek_v3\",\"fmt\":\"torch\",\"pp\":2,\"first_stage_layers\":1}|1"
  "deepseek-ep2-as-pp2|deepseek_v3_mtp_ep2_dist|--ep 2|{\"family\":\"deepseek_v3\",\"fmt\":\"torch_dist\",\"pp\":2,\"first_stage_layers\":1}|1"
  "qwen25vl-tp2|qwen25vl_tp2_dist|--tp 2|{\"family\":\"qwen2_5_vl\",\"fmt\":\"torch_dist\",\"tp\":2}|1"
  "qwen25vl-legacy-tp2|qwen25vl_tp2_dist|--tp 2 --format torch|{\"family\":\"qwen2_5_vl\",\"fmt\":\"torch\",\"tp\":2}|1"
  "glm45-ep2|glm45_ep2_dist|--ep 2|{\"family\":\"glm4_moe\",\"fmt\":\"torch_dist\",\"ep\":2}|16"
)
for entry in "${cases[@]}"; do
  IFS='|' read -r name fixture flags load divisor <<<"$entry"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  out="$work/$name"
  rm -rf "$out"
  # shellcheck disable=SC2086
  if ! "$ckpt" convert --to megatron "$M/$fixture/hf" --target_dir "$out" $flags --layer-spec local \
      --make-vocab-size-divisible-by "$divisor" -q 2>"$out.err"; then
    echo "$name: convert failed: $(head -c 300 "$out.err")"; continue
  fi
  "$repo/tools/oracle-run.sh" --suite sid --bind "$repo" --bind "$work" -- env \
    PYTHONPATH=/opt/mlm:/opt/mbridge python3 "$repo/tools/interop/load_megatron_checkpoint.py" \
    "$out" "$M/$fixture/hf" "$load" --divisor "$divisor" >"$out.log" 2>&1
  rc=$?
  echo "$name (convert $flags; load $load): exit $rc: $(grep -E '^(problem|load_checkpoint)' "$out.log" | tail -3 | tr '\n' ' ')$( [ $rc = 0 ] || tail -2 "$out.log" | tr '\n' ' ')"
done
