#!/usr/bin/env bash
# Megatron checkpoints written by real megatron-core (tests/fixtures/megatron), merged by
# ckptstream, loaded by transformers 5 (AutoModelForCausalLM.from_pretrained, sid oracle): no
# missing or unexpected keys, every parameter equal to the reference model transformers saved,
# and the reference model's logits. A dense model (Qwen3, legacy PP 2 x VPP 2) and MoE models
# (Qwen3-MoE torch_dist EP 2, Mixtral TP 2 x EP 2, Qwen2-MoE with a shared expert); and with
# --keep-packed-experts, the state dict transformers 5 holds in memory.
source "$(dirname "$0")/lib.sh"
SID_ROOT="${CKPTSTREAM_ORACLE_ROOT:-/var/cache/ckptstream-oracle}-sid"
trap 'cleanup; rmdir "$SID_ROOT$WORK" 2>/dev/null || true' EXIT
FIX="$WORK/megatron"
mkdir -p "$FIX"
for c in qwen3_pp2vpp2_legacy qwen3moe_ep2_dist mixtral_tp2ep2_dist qwen2moe_tp2_dist; do
  cp -r "$REPO/tests/fixtures/megatron/$c" "$FIX/"
  log="$(logname "$c").merge.log"
  run_ckpt "$log" merge --backend megatron --local_dir "$FIX/$c/megatron" --hf-config \
    "$FIX/$c/hf" --target_dir "$WORK/out/$c" --quiet
  if [ "$RC" != 0 ]; then fail "$c: ckptstream merge exited $RC:"; show "$log"; continue; fi
  log="$(logname "$c").check.log"
  if (cd "$WORK" && "$REPO/tools/oracle-run.sh" --suite sid --bind "$WORK" -- \
    python3 "$PY/check_moe_load.py" "$WORK/out/$c" "$FIX/$c/hf" -) >"$log" 2>&1; then
    pass "$c: $(tail -n 1 "$log")"
  else
    fail "$c: transformers disagrees:"; show "$log" 30
  fi
done
# --keep-packed-experts: the experts as transformers 5 holds them in memory, bit for bit.
for c in qwen3moe_ep2_dist mixtral_tp2ep2_dist qwen2moe_tp2_dist; do
  [ -d "$FIX/$c" ] || cp -r "$REPO/tests/fixtures/megatron/$c" "$FIX/"
  log="$(logname "$c-packed").merge.log"
  run_ckpt "$log" merge --local_dir "$FIX/$c/megatron" --hf-config "$FIX/$c/hf" \
    --keep-packed-experts --target_dir "$WORK/out/$c-packed" --quiet
  if [ "$RC" != 0 ]; then fail "$c --keep-packed-experts: merge exited $RC:"; show "$log"; continue; fi
  log="$(logname "$c-packed").check.log"
  if (cd "$WORK" && "$REPO/tools/oracle-run.sh" --suite sid --bind "$WORK" -- \
    python3 "$PY/check_packed_experts.py" "$WORK/out/$c-packed" "$FIX/$c/hf") >"$log" 2>&1; then
    pass "$c --keep-packed-experts: $(tail -n 1 "$log")"
  else
    fail "$c --keep-packed-experts: transformers disagrees:"; show "$log" 30
  fi
done
finish
