#!/usr/bin/env bash
# `merge` of verl FSDP2 checkpoints holding LoRA adapters (tests/fixtures/fsdp_lora/, torch 2.6)
# and packed MoE experts (tests/fixtures/fsdp_moe/, torch 2.14 + transformers 5), both made by
# tools/fixtures/make_fsdp_lora_moe_fixtures.py with real FSDP2. No torch here: the expected
# outputs were computed by torch / saved by transformers' save_pretrained when the fixtures were
# made.
source "$(dirname "$0")/lib.sh"
LORA="$FIXTURES/fsdp_lora"
MOE="$FIXTURES/fsdp_moe"
st() { python3 "$REPO/tools/interop/st_pure.py" "$@"; }

# as_ref NAME FILE : a directory $WORK/ref-NAME holding FILE as model.safetensors
as_ref() { mkdir -p "$WORK/ref-$1"; cp "$2" "$WORK/ref-$1/model.safetensors"; echo "$WORK/ref-$1"; }
check_rc() {
  if [ "$RC" = "$1" ]; then pass "$2"; else
    fail "$2: exit $RC, expected $1: $(head -c 400 "$3.err" 2>/dev/null) $(head -c 200 "$3")"; fi
}
model_files() { [ -d "$1" ] && find "$1" \( -name '*.safetensors' -o -name '*.index.json' \
                  -o -name 'adapter_config.json' \) | tr '\n' ' ' || true; }

# --- LoRA: fused (default) ---------------------------------------------------------------------
ref_fused=$(as_ref fused "$LORA/expected_fused.safetensors")
ref_base=$(as_ref base "$LORA/expected_base.safetensors")
run_ckpt "$WORK/fuse" merge --backend fsdp --local_dir "$LORA" --target_dir "$WORK/fused" --dtype keep
check_rc 0 "lora: merge (fuse, alpha 8 r 4 from lora_train_meta.json)" "$WORK/fuse"
grep -q 'alpha 8' "$WORK/fuse.err" "$WORK/fuse" && pass "lora: says where alpha came from" \
  || fail "lora: no note on alpha: $(head -c 300 "$WORK/fuse.err")"
run_ckpt "$WORK/verify-fused" verify "$WORK/fused" --reference "$ref_fused"
if [ "$RC" = 0 ]; then pass "lora: fused == W + (alpha/r) B@A computed by torch in float32 (exact)"
else
  fail "lora: fused output differs from torch's fusion (exact): $(head -c 400 "$WORK/verify-fused.err")"
  run_ckpt "$WORK/verify-fused-tol" verify "$WORK/fused" --reference "$ref_fused" --atol 1e-6
  check_rc 0 "lora: fused == torch's fusion within --atol 1e-6" "$WORK/verify-fused-tol"
fi
run_ckpt "$WORK/verify-fused-base" verify "$WORK/fused" --reference "$ref_base"
check_rc 1 "lora: the fused model is not the base model (B is non-zero)" "$WORK/verify-fused-base"
if st names "$WORK/fused" | grep -E 'lora_|base_layer|^base_model\.' >/dev/null; then
  fail "lora: fused output keeps PEFT names: $(st names "$WORK/fused" | grep -E 'lora_|base_layer|^base_model' | head -3 | tr '\n' ' ')"
else pass "lora: fused output has Hugging Face names only"; fi
[ ! -e "$WORK/fused/lora_adapter" ] && pass "lora: fuse writes no lora_adapter/" || fail "lora: fuse wrote lora_adapter/"
run_ckpt "$WORK/test-fused" test --local_dir "$LORA" --test_hf_dir "$ref_fused" --dtype keep
check_rc 0 "lora: test --test_hf_dir expected_fused" "$WORK/test-fused"
run_ckpt "$WORK/source-fused" verify "$WORK/fused" --source --local_dir "$LORA" --dtype keep
check_rc 0 "lora: verify --source (fused checksums recomputed from the shards)" "$WORK/source-fused"
run_ckpt "$WORK/plan-fused.json" plan --dry-run --local_dir "$LORA" --dtype keep --json
if [ "$RC" = 0 ] && python3 -m json.tool "$WORK/plan-fused.json" >/dev/null 2>&1 \
   && [ "$(st plan_names "$WORK/plan-fused.json")" = "$(st names "$WORK/fused")" ]; then
  pass "lora: plan --json lists the fused output's tensors"
else fail "lora: plan --json (exit $RC) does not match the fused output"; fi

# --- LoRA: adapter mode ------------------------------------------------------------------------
run_ckpt "$WORK/adapter" merge --local_dir "$LORA" --target_dir "$WORK/adapter-out" --dtype keep --lora adapter --quiet
check_rc 0 "lora: merge --lora adapter" "$WORK/adapter"
ad="$WORK/adapter-out/lora_adapter"
if [ -f "$ad/adapter_model.safetensors" ] && [ -f "$ad/adapter_config.json" ]; then
  pass "lora adapter: lora_adapter/adapter_model.safetensors + adapter_config.json written"
else fail "lora adapter: lora_adapter/ lacks adapter_model.safetensors or adapter_config.json: $(ls "$ad" 2>&1)"; fi
run_ckpt "$WORK/verify-adapter-base" verify "$WORK/adapter-out" --reference "$ref_base"
check_rc 0 "lora adapter: base model == expected_base (exact)" "$WORK/verify-adapter-base"
if st equal "$ad/adapter_model.safetensors" "$LORA/expected_adapter.safetensors" >"$WORK/adapter-equal" 2>&1; then
  pass "lora adapter: adapter_model.safetensors == expected_adapter (names, shapes, bytes)"
else fail "lora adapter: adapter tensors differ: $(head -c 400 "$WORK/adapter-equal")"; fi
if python3 - "$ad/adapter_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
want = {"r": 4, "lora_alpha": 8, "peft_type": "LORA", "task_type": "CAUSAL_LM", "use_rslora": False}
bad = {k: c.get(k) for k in want if c.get(k) != want[k]}
bad.update({} if sorted(c.get("target_modules") or []) == ["q_proj", "v_proj"]
           else {"target_modules": c.get("target_modules")})
sys.exit(print(bad) or 1 if bad else 0)
PY
then pass "lora adapter: adapter_config.json r 4, lora_alpha 8, target_modules q_proj v_proj"
else fail "lora adapter: adapter_config.json is wrong"; fi
# every file in the output verifies against its manifest, the adapter folder included
run_ckpt "$WORK/verify-adapter-dir" verify "$ad"
check_rc 0 "lora adapter: verify OUT/lora_adapter (it has its own manifest)" "$WORK/verify-adapter-dir"

# --- LoRA: no lora_train_meta.json -> refuse to guess alpha ----------------------------------
cp -r "$LORA" "$WORK/nometa"; rm "$WORK/nometa/lora_train_meta.json"
for mode in fuse adapter; do
  run_ckpt "$WORK/nometa-$mode" merge --local_dir "$WORK/nometa" --target_dir "$WORK/nometa-$mode-out" --lora "$mode" --quiet
  msg=$(head -c 600 "$WORK/nometa-$mode.err" | tr '\n' ' ')
  if [ "$RC" != 2 ] && [ "$RC" != 3 ]; then fail "lora without alpha ($mode): exit $RC, expected 2 or 3: $msg"
  elif ! grep -qF -- '--lora-alpha' "$WORK/nometa-$mode.err"; then fail "lora without alpha ($mode): message does not name --lora-alpha: $msg"
  elif [ -n "$(model_files "$WORK/nometa-$mode-out")" ]; then fail "lora without alpha ($mode): wrote $(model_files "$WORK/nometa-$mode-out")"
  else pass "lora without alpha ($mode): exit $RC, nothing written, '$(head -c 160 "$WORK/nometa-$mode.err")...'"; fi
done
# its advice must work: `--lora adapter` needs alpha too (for adapter_config.json), so suggesting it
# as the way out is a dead end
if grep -qF -- '--lora adapter' "$WORK/nometa-fuse.err" && [ "$(cat "$WORK/nometa-adapter.err")" = "$(cat "$WORK/nometa-fuse.err")" ]; then
  fail "the missing-alpha message suggests --lora adapter, which fails with the same message"
else pass "the missing-alpha message gives no advice that fails the same way"; fi
# every flag the message tells the user to pass must exist
for flag in $(grep -oE -- '--[a-z][a-z_-]+' "$WORK/nometa-fuse.err" | sort -u); do
  if "$CKPT" merge --help | grep -F -- "$flag" >/dev/null; then pass "the missing-alpha message names $flag, which exists"
  else fail "the missing-alpha message tells the user to pass $flag, which merge does not accept"; fi
done
run_ckpt "$WORK/nometa-alpha" merge --local_dir "$WORK/nometa" --target_dir "$WORK/nometa-alpha-out" --dtype keep --lora-alpha 8 --quiet
check_rc 0 "lora without meta, --lora-alpha 8" "$WORK/nometa-alpha"
run_ckpt "$WORK/verify-nometa-alpha" verify "$WORK/nometa-alpha-out" --reference "$ref_fused"
check_rc 0 "lora without meta, --lora-alpha 8 == expected_fused" "$WORK/verify-nometa-alpha"
run_ckpt "$WORK/nometa-alpha16" merge --local_dir "$WORK/nometa" --target_dir "$WORK/nometa-alpha16-out" --dtype keep --lora_alpha 16 --quiet
run_ckpt "$WORK/verify-nometa-alpha16" verify "$WORK/nometa-alpha16-out" --reference "$ref_fused"
check_rc 1 "lora --lora_alpha 16 gives another model than alpha 8" "$WORK/verify-nometa-alpha16"
# alpha from a verl S1 lora_adapter/adapter_config.json instead
mkdir -p "$WORK/nometa-cfg"; cp -r "$WORK/nometa/." "$WORK/nometa-cfg/"; mkdir -p "$WORK/nometa-cfg/lora_adapter"
printf '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}\n' \
  >"$WORK/nometa-cfg/lora_adapter/adapter_config.json"
run_ckpt "$WORK/nometa-cfg.log" merge --local_dir "$WORK/nometa-cfg" --target_dir "$WORK/nometa-cfg-out" --dtype keep --quiet
run_ckpt "$WORK/verify-nometa-cfg" verify "$WORK/nometa-cfg-out" --reference "$ref_fused"
check_rc 0 "lora: alpha from lora_adapter/adapter_config.json == expected_fused" "$WORK/verify-nometa-cfg"
# verl S1 wrote lora_alpha 0 on purpose: refused, not used
sed -i 's/"lora_alpha": 8/"lora_alpha": 0/' "$WORK/nometa-cfg/lora_adapter/adapter_config.json"
run_ckpt "$WORK/alpha0" merge --local_dir "$WORK/nometa-cfg" --target_dir "$WORK/alpha0-out" --quiet
{ [ "$RC" = 2 ] || [ "$RC" = 3 ]; } && [ -z "$(model_files "$WORK/alpha0-out")" ] \
  && pass "lora: adapter_config.json with lora_alpha 0 (verl S1) refused: exit $RC" \
  || fail "lora: adapter_config.json with lora_alpha 0: exit $RC"

# --- MoE (torch 2.14 FSDP2 shards of a transformers-5 Qwen3-MoE model) ------------------------
ref_packed=$(as_ref packed "$MOE/expected_packed.safetensors")
run_ckpt "$WORK/moe" merge --backend fsdp --local_dir "$MOE" --target_dir "$WORK/moe-out"
check_rc 0 "moe: merge (torch 2.14 DTensor shards)" "$WORK/moe"
if [ "$RC" = 0 ]; then
  run_ckpt "$WORK/verify-moe" verify "$WORK/moe-out" --reference "$MOE/expected"
  check_rc 0 "moe: merge == transformers' save_pretrained (names, shapes, dtypes, values)" "$WORK/verify-moe"
  cmp -s "$WORK/moe-out/model.safetensors" "$MOE/expected/model.safetensors" \
    && pass "moe: model.safetensors byte-identical to save_pretrained's" \
    || fail "moe: model.safetensors not byte-identical to save_pretrained's"
  cmp -s "$WORK/moe-out/config.json" "$MOE/huggingface/config.json" && cmp -s \
    "$WORK/moe-out/generation_config.json" "$MOE/huggingface/generation_config.json" \
    && pass "moe: config.json, generation_config.json copied" || fail "moe: side files not copied as they are"
  run_ckpt "$WORK/test-moe" test --local_dir "$MOE" --test_hf_dir "$MOE/expected"
  check_rc 0 "moe: test --test_hf_dir save_pretrained output" "$WORK/test-moe"
  run_ckpt "$WORK/source-moe" verify "$WORK/moe-out" --source --local_dir "$MOE"
  check_rc 0 "moe: verify --source" "$WORK/source-moe"
fi
run_ckpt "$WORK/moe-packed" merge --local_dir "$MOE" --target_dir "$WORK/moe-packed-out" --keep-packed-experts --quiet
check_rc 0 "moe: merge --keep-packed-experts" "$WORK/moe-packed"
if [ "$RC" = 0 ]; then
  run_ckpt "$WORK/verify-moe-packed" verify "$WORK/moe-packed-out" --reference "$ref_packed"
  check_rc 0 "moe --keep-packed-experts == the in-memory packed state dict" "$WORK/verify-moe-packed"
  # grep reads all its input (no -q): an early exit would break the pipe under pipefail
  st names "$WORK/moe-packed-out" | grep 'mlp.experts.gate_up_proj$' >/dev/null \
    && pass "moe --keep-packed-experts: packed keys kept" || fail "moe --keep-packed-experts: no packed keys"
fi
run_ckpt "$WORK/plan-moe.json" plan --dry-run --local_dir "$MOE" --json
if [ "$RC" = 0 ] && [ "$(st plan_names "$WORK/plan-moe.json")" = "$(st names "$MOE/expected")" ]; then
  pass "moe: plan --json lists save_pretrained's tensors"
else fail "moe: plan --json (exit $RC) does not list save_pretrained's tensors: $(head -c 300 "$WORK/plan-moe.json.err")"; fi
finish
