#!/usr/bin/env bash
# `merge --backend fsdp` judged by real torch: the outputs of every committed verl FSDP2 fixture
# (tests/fixtures/fsdp, fsdp_lora, fsdp_moe) loaded back with torch + safetensors (trixie oracle,
# torch 2.6) and compared with torch.equal to the full state dict (keep and bf16); the LoRA fusion
# recomputed by torch from the shards; and the MoE model loaded by transformers 5
# (AutoModelForCausalLM.from_pretrained, sid oracle) with no missing / unexpected keys and the
# reference model's logits.
source "$(dirname "$0")/lib.sh"
FIX="$WORK/fixtures"
mkdir -p "$FIX"
cp -r "$REPO/tests/fixtures/fsdp" "$REPO/tests/fixtures/fsdp_lora" "$REPO/tests/fixtures/fsdp_moe" "$FIX/"
SID_ROOT="${CKPTSTREAM_ORACLE_ROOT:-/var/cache/ckptstream-oracle}-sid"
trap 'cleanup; rmdir "$SID_ROOT$WORK" 2>/dev/null || true' EXIT
# oracle_sid SCRIPT.py ARGS... : python3 $PY/SCRIPT.py under torch 2.14 + transformers 5.
oracle_sid() {
  local script=$1; shift
  (cd "$WORK" && "$REPO/tools/oracle-run.sh" --suite sid --bind "$WORK" -- python3 "$PY/$script" "$@")
}
# merge_ok NAME OUT ARGS... : ckptstream merge, failing the test on rc != 0.
merge_ok() {
  local name=$1 out=$2; shift 2
  local log; log="$(logname "$name").merge.log"
  run_ckpt "$log" merge --backend fsdp "$@" --target_dir "$out" --quiet
  if [ "$RC" != 0 ]; then fail "$name: ckptstream merge $* exited $RC:"; show "$log"; return 1; fi
}
# judge NAME SCRIPT ARGS... : an oracle check that must pass (trixie).
judge() {
  local name=$1 script=$2; shift 2
  local log; log="$(logname "$name").check.log"
  if oracle "$script" "$@" >"$log" 2>&1; then pass "$name: $(tail -n 1 "$log")"
  else fail "$name: torch disagrees:"; show "$log" 30; fi
}
judge_sid() {
  local name=$1 script=$2; shift 2
  local log; log="$(logname "$name").check.log"
  if oracle_sid "$script" "$@" >"$log" 2>&1; then pass "$name: $(tail -n 1 "$log")"
  else fail "$name: transformers disagrees:"; show "$log" 30; fi
}

# --- dense fixtures: keep and bf16, every tensor torch.equal ---------------------------------
for c in w1_fsdp w1_plain w2 w3 w4 hsdp shard1 tied bf16 critic empty mesh_reversed; do
  drop=()
  [ "$c" = tied ] && drop=(--drop lm_head.weight)
  if merge_ok "$c-keep" "$WORK/out/$c-keep" --local_dir "$FIX/fsdp/$c" --dtype keep; then
    judge "$c keep" check_merge_equal.py "$WORK/out/$c-keep" "$FIX/fsdp/$c/expected.safetensors" "${drop[@]}"
  fi
  if merge_ok "$c-bf16" "$WORK/out/$c-bf16" --local_dir "$FIX/fsdp/$c" --dtype bf16; then
    judge "$c bf16" check_merge_equal.py "$WORK/out/$c-bf16" "$FIX/fsdp/$c/expected.safetensors" --bf16 "${drop[@]}"
  fi
done
# several output files, loaded through the index as transformers does
if merge_ok w4-sharded "$WORK/out/w4-sharded" --local_dir "$FIX/fsdp/w4" --dtype bf16 --max-shard-size 3KB; then
  judge "w4 bf16 in 3KB shards" check_merge_equal.py "$WORK/out/w4-sharded" "$FIX/fsdp/w4/expected.safetensors" --bf16
fi

# --- LoRA: fusion recomputed by torch from the rank files --------------------------------------
L="$FIX/fsdp_lora"
if merge_ok lora-fuse "$WORK/out/lora-fuse" --local_dir "$L" --dtype keep; then
  judge "lora fuse" check_lora_fuse.py "$L" "$WORK/out/lora-fuse" --alpha 8
  judge "lora fuse vs the committed expected" check_merge_equal.py "$WORK/out/lora-fuse" "$L/expected_fused.safetensors"
fi
if merge_ok lora-rslora "$WORK/out/lora-rslora" --local_dir "$L" --dtype keep --use-rslora; then
  judge "lora fuse --use-rslora" check_lora_fuse.py "$L" "$WORK/out/lora-rslora" --alpha 8 --rslora
fi
if merge_ok lora-adapter "$WORK/out/lora-adapter" --local_dir "$L" --dtype keep --lora adapter; then
  judge "lora --lora adapter" check_lora_fuse.py "$L" "$WORK/out/lora-adapter" --alpha 8 --adapter
fi

# --- MoE: transformers 5 loads the merged model and gives the reference logits -----------------
M="$FIX/fsdp_moe"
# (a) the committed torch 2.14 FSDP2 shards
if merge_ok moe "$WORK/out/moe" --local_dir "$M"; then
  judge_sid "moe (torch 2.14 shards) from_pretrained" check_moe_load.py "$WORK/out/moe" "$M/expected" "$M/expected_logits.safetensors"
  judge "moe (torch 2.14 shards) tensors" check_merge_equal.py "$WORK/out/moe" "$M/expected/model.safetensors"
fi
if merge_ok moe-packed "$WORK/out/moe-packed" --local_dir "$M" --keep-packed-experts; then
  judge "moe --keep-packed-experts == in-memory state dict" check_merge_equal.py "$WORK/out/moe-packed" "$M/expected_packed.safetensors"
fi
# (b) the same state dict through torch 2.6's DTensor pickles (FSDP2 Shard(0), 2 gloo ranks)
mkdir -p "$WORK/moe26/huggingface"
cp "$M/huggingface/"* "$WORK/moe26/huggingface/"
if oracle make_fsdp_from_safetensors.py "$M/expected_packed.safetensors" "$WORK/moe26" 2 >"$WORK/moe26.log" 2>&1; then
  if merge_ok moe26 "$WORK/out/moe26" --local_dir "$WORK/moe26"; then
    judge_sid "moe (torch 2.6 shards) from_pretrained" check_moe_load.py "$WORK/out/moe26" "$M/expected" "$M/expected_logits.safetensors"
    cmp -s "$WORK/out/moe26/model.safetensors" "$M/expected/model.safetensors" \
      && pass "moe (torch 2.6 shards): model.safetensors byte-identical to save_pretrained's" \
      || fail "moe (torch 2.6 shards): model.safetensors differs from save_pretrained's"
  fi
  if merge_ok moe26-bf16 "$WORK/out/moe26-bf16" --local_dir "$WORK/moe26" --dtype bf16; then
    judge "moe (torch 2.6 shards) bf16" check_merge_equal.py "$WORK/out/moe26-bf16" "$M/expected/model.safetensors" --bf16
  fi
else
  fail "could not write the torch 2.6 MoE shards:"; show "$WORK/moe26.log"
fi
finish
