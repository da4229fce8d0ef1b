#!/usr/bin/env bash
# Megatron checkpoints (issue 14), on fixtures written by real megatron-core from Hugging Face
# models (tools/fixtures/make_megatron_fixtures.py): every case merges to a model.safetensors
# byte-identical to the one transformers saved, through merge, plan, test and verify --source;
# the directory conventions (tracker, --iteration, verl's actor/dist_ckpt + huggingface/) are
# found; bad checkpoints fail clearly and write nothing.
source "$(dirname "$0")/lib.sh"
MEG="$FIXTURES/megatron"

cases=$(cd "$MEG" && ls -d -- */ | tr -d /)
[ -n "$cases" ] || fail "no Megatron fixtures in $MEG"
for case in $cases; do
  ckpt="$MEG/$case/megatron" hf="$MEG/$case/hf" out="$WORK/out-$case"
  # Value models (verl's critic): a one-row head, written as score.* with --is-value-model.
  value=()
  case "$case" in *_value_*) value=(--is-value-model) ;; esac
  expect_rc 0 "$case: merge (auto)" merge --local_dir "$ckpt" --hf-config "$hf" \
    --target_dir "$out" "${value[@]}"
  cmp -s "$out/model.safetensors" "$hf/model.safetensors" &&
    pass "$case: model.safetensors byte-identical to transformers' save_pretrained" ||
    fail "$case: model.safetensors differs from the reference"
  cmp -s "$out/config.json" "$hf/config.json" && pass "$case: config.json copied" ||
    fail "$case: config.json not copied"
  expect_rc 0 "$case: merge --dtype keep" merge --local_dir "$ckpt" --hf-config "$hf" \
    --target_dir "$out-keep" --dtype keep "${value[@]}"
  cmp -s "$out-keep/model.safetensors" "$hf/model.safetensors" &&
    pass "$case: --dtype keep is byte-identical too" || fail "$case: --dtype keep differs"
  expect_rc 0 "$case: merge --backend megatron --dtype bf16" merge --backend megatron \
    --local_dir "$ckpt" --hf-config "$hf" --target_dir "$out-bf16" --dtype bf16 "${value[@]}"
  expect_rc 0 "$case: bf16 output equals the reference" verify "$out-bf16" --reference "$hf"
  expect_rc 0 "$case: verify --source" verify "$out" --source --local_dir "$ckpt" \
    --hf-config "$hf" "${value[@]}"
  expect_rc 0 "$case: test --test_hf_dir" test --local_dir "$ckpt" --hf-config "$hf" \
    --test_hf_dir "$hf" "${value[@]}"
  run_ckpt "$WORK/plan-$case" plan --dry-run --json --local_dir "$ckpt" --hf-config "$hf" \
    "${value[@]}"
  [ "$RC" = 0 ] && grep -q '0 unmapped; every tensor config.json' "$WORK/plan-$case" \
    "$WORK/plan-$case.err" && pass "$case: plan --json shows the coverage" ||
    fail "$case: plan --json: exit $RC, no coverage note"
done

# What each layout is read as, from the run's own args (legacy) or the metadata (torch_dist).
notes() { run_ckpt "$WORK/notes" plan --local_dir "$MEG/$1/megatron" --hf-config "$MEG/$1/hf" \
  --summary; cat "$WORK/notes.err"; }
notes qwen3_pp2vpp2_legacy | grep -q "TP 1, PP 2 x VPP 2, EP 1 (from args), 2 rank files" &&
  pass "legacy PP x VPP read from args" || fail "legacy PP x VPP: $(notes qwen3_pp2vpp2_legacy)"
notes llama_tp2pp2_uneven_legacy | grep -q "skipped output_layer.weight of the last pipeline" &&
  pass "tied model, PP 2: the last stage's copy of the embedding is skipped by rule" ||
  fail "tied PP copy: $(notes llama_tp2pp2_uneven_legacy)"
notes qwen2_tp2_dist | grep -q "vocab padding trimmed: 28 rows" &&
  pass "padded vocab rows trimmed to config.json's vocab_size" || fail "vocab trim note"

# Directory conventions: the iteration directory itself, --iteration, verl's actor layout.
it="$MEG/qwen2_tp2_dist/megatron/iter_0000010"
expect_rc 0 "an iteration directory given directly" merge --local_dir "$it" \
  --hf-config "$MEG/qwen2_tp2_dist/hf" --target_dir "$WORK/iterdir"
expect_rc 0 "--iteration 10" merge --local_dir "$MEG/qwen2_tp2_dist/megatron" --iteration 10 \
  --hf-config "$MEG/qwen2_tp2_dist/hf" --target_dir "$WORK/iter10"
run_ckpt "$WORK/iter5" merge --local_dir "$MEG/qwen2_tp2_dist/megatron" --iteration 5 \
  --hf-config "$MEG/qwen2_tp2_dist/hf" --target_dir "$WORK/iter5-out"
[ "$RC" = 3 ] && grep -q "iter_0000005 is missing" "$WORK/iter5.err" && [ ! -e "$WORK/iter5-out" ] &&
  pass "--iteration 5 (absent): exit 3 naming iter_0000005, nothing written" ||
  fail "--iteration 5: exit $RC, $(cat "$WORK/iter5.err")"
actor="$WORK/verl/global_step_10/actor"
mkdir -p "$actor"
cp -r "$it" "$actor/dist_ckpt"
cp -r "$MEG/qwen2_tp2_dist/hf" "$actor/huggingface"
expect_rc 0 "verl layout: actor/dist_ckpt + actor/huggingface, no --hf-config" merge \
  --backend megatron --local_dir "$actor" --target_dir "$WORK/verl-out"
cmp -s "$WORK/verl-out/model.safetensors" "$MEG/qwen2_tp2_dist/hf/model.safetensors" &&
  pass "verl layout: byte-identical" || fail "verl layout: output differs"
run_ckpt "$WORK/verl-plan" plan --summary --local_dir "$actor"
grep -q "huggingface already holds Hugging Face weights" "$WORK/verl-plan.err" &&
  pass "verl's huggingface/ with weights in it: said" || fail "no note on verl's HF weights"
run_ckpt "$WORK/value-plan" plan --summary --is-value-model --local_dir \
  "$MEG/qwen2_value_tp2_dist/megatron" --hf-config "$MEG/qwen2_tp2_dist/hf"
grep -q "value model: config.json names Qwen2ForCausalLM" "$WORK/value-plan.err" &&
  pass "a value model with a causal-LM config.json: the config change is said" ||
  fail "value model note: $(cat "$WORK/value-plan.err")"
expect_rc 0 "--packed-experts (the issue's spelling of --keep-packed-experts)" merge \
  --local_dir "$MEG/qwen3moe_ep2_dist/megatron" --hf-config "$MEG/qwen3moe_ep2_dist/hf" \
  --packed-experts --target_dir "$WORK/packed"
run_ckpt "$WORK/packed-list" inspect "$WORK/packed/model.safetensors"
grep -q "model.layers.1.mlp.experts.gate_up_proj  *bfloat16  *\[4, 32, 32\]" "$WORK/packed-list" &&
  pass "--packed-experts: gate_up_proj [E, 2F, H]" || fail "packed: $(grep experts "$WORK/packed-list" | head -3)"

# verl's older spelling of the config directory, and a merge split between two processes
# (--world-size / --rank, small shards) that writes what one process writes.
expect_rc 0 "--hf_model_path (older verl)" merge --backend megatron --local_dir \
  "$MEG/mixtral_tp2ep2_dist/megatron" --hf_model_path "$MEG/mixtral_tp2ep2_dist/hf" \
  --target_dir "$WORK/hfmp"
unset RANK WORLD_SIZE LOCAL_RANK OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE SLURM_PROCID || true
dist_args=(merge --local_dir "$MEG/mixtral_tp2ep2_dist/megatron" --hf-config
  "$MEG/mixtral_tp2ep2_dist/hf" --max-shard-size 40KB)
expect_rc 0 "mixtral in 40 KB shards, one process" "${dist_args[@]}" --target_dir "$WORK/one"
for r in 0 1; do
  "$CKPT" "${dist_args[@]}" --target_dir "$WORK/two" --world-size 2 --rank $r \
    >"$WORK/two.$r" 2>&1 </dev/null &
done
wait
bad=""
while read -r f; do cmp -s "$WORK/one/$f" "$WORK/two/$f" || bad="$bad $f"; done \
  < <(cd "$WORK/one" && find . -type f)
[ -z "$bad" ] && [ "$(ls "$WORK/one" | wc -l)" -gt 3 ] &&
  pass "two ranks write what one process writes ($(ls "$WORK/one" | wc -l) files)" ||
  fail "two ranks differ from one process:$bad $(cat "$WORK/two.0" "$WORK/two.1" | tail -5)"

# inspect points at the files of a checkpoint directory; convert --to torch writes the state
# dict as saved: megatron-core's names, each tensor whole (TP shards joined, layers unstacked).
run_ckpt "$WORK/inspect" inspect "$MEG/qwen2_tp2_legacy/megatron"
[ "$RC" = 0 ] && grep -q "subdirectories" "$WORK/inspect.err" &&
  pass "inspect of a save directory says where the files are" || fail "inspect: $RC $(cat "$WORK/inspect.err")"
expect_rc 0 "convert --to torch of a legacy TP 2 checkpoint" convert --to torch \
  "$MEG/qwen2_tp2_legacy/megatron" --target-file "$WORK/mcore.pt"
run_ckpt "$WORK/mcore" inspect "$WORK/mcore.pt"
grep -q "decoder.layers.1.self_attention.linear_qkv.weight  *bfloat16  *\[64, 32\]" "$WORK/mcore" &&
  grep -q "embedding.word_embeddings.weight  *bfloat16  *\[128, 32\]" "$WORK/mcore" &&
  pass "the torch file holds the global megatron-core tensors" ||
  fail "convert --to torch: $(head -5 "$WORK/mcore")"

# A vision-language checkpoint without its vision tower: refused naming --vit_dir; with it, the
# tower comes from the Hugging Face model given, and the model is whole.
NOVIT="$FIXTURES/megatron_novit/qwen25vl_novit"
run_ckpt "$WORK/novit" merge --local_dir "$NOVIT/megatron" --hf-config "$NOVIT/hf" \
  --target_dir "$WORK/novit-out"
[ "$RC" = 3 ] && grep -q -- "--vit_dir" "$WORK/novit.err" && [ ! -e "$WORK/novit-out" ] &&
  pass "no vision tower: exit 3 naming --vit_dir, nothing written" ||
  fail "no vision tower: exit $RC, $(cat "$WORK/novit.err")"
expect_rc 0 "--vit_dir" merge --local_dir "$NOVIT/megatron" --hf-config "$NOVIT/hf" \
  --vit_dir "$NOVIT/hf" --target_dir "$WORK/vit"
cmp -s "$WORK/vit/model.safetensors" "$NOVIT/hf/model.safetensors" &&
  pass "--vit_dir: byte-identical to the whole model" || fail "--vit_dir: output differs"

# Bad input: a clear message naming the problem, a non-zero exit, nothing in the target.
expect_failure() {  # expect_failure WHAT RC PATTERN ARGS...
  local what=$1 want=$2 pattern=$3; shift 3
  local target="$WORK/bad-$RANDOM"
  run_ckpt "$WORK/bad" "$@" --target_dir "$target"
  if [ "$RC" = "$want" ] && grep -q -- "$pattern" "$WORK/bad.err" && [ ! -e "$target" ]; then
    pass "$what: exit $RC, '$pattern', nothing written"
  else
    fail "$what: exit $RC (want $want), stderr: $(head -c 600 "$WORK/bad.err")"
  fi
}
copy_case() { rm -rf "$WORK/$1"; cp -r "$MEG/$1" "$WORK/$1"; printf '%s' "$WORK/$1"; }

c=$(copy_case qwen2_tp2_legacy)
rm -r "$c/megatron/iter_0000010/mp_rank_01"
expect_failure "a missing TP rank file" 3 "on 1 of 2 tensor-parallel ranks" merge \
  --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case qwen2_tp2_dist)
f="$c/megatron/iter_0000010/__1_0.distcp"
truncate -s $(($(stat -c %s "$f") / 2)) "$f"
expect_failure "a truncated .distcp" 3 "__1_0.distcp" merge --local_dir "$c/megatron" \
  --hf-config "$c/hf"

c=$(copy_case qwen2_tp2_dist)
sed -i 's/"num_attention_heads": 4/"num_attention_heads": 8/' "$c/hf/config.json"
expect_failure "config.json's heads disagree with the checkpoint's args (common_state)" 3 \
  "num_attention_heads 8 vs num_attention_heads 4" merge --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case qwen2_tp2_dist)
sed -i 's/"model_type": "qwen2"/"model_type": "gpt2"/' "$c/hf/config.json"
expect_failure "a family without a table" 3 "decoder.layers.0.self_attention.linear_qkv.weight" \
  merge --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case qwen2_tp2_dist)
sed -i 's/"num_hidden_layers": 2/"num_hidden_layers": 3/' "$c/hf/config.json"
expect_failure "config.json's layers disagree with the checkpoint's args" 3 \
  "num_hidden_layers 3 vs num_layers 2" merge --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case qwen2_verl_actor)
sed -i 's/"num_layers": 2/"num_layers": 3/' "$c/megatron/transformer_config.json"
expect_failure "verl's transformer_config.json disagrees with config.json" 3 \
  "transformer_config.json disagree: num_hidden_layers 2 vs num_layers 3" merge --backend \
  megatron --local_dir "$c/megatron"

c=$(copy_case qwen2_bridge)
sed -i 's/  hidden_size: 32/  hidden_size: 64/' "$c/megatron/iter_0000010/run_config.yaml"
expect_failure "Megatron-Bridge's run_config.yaml disagrees with config.json" 3 \
  "run_config.yaml disagree: hidden_size 32 vs hidden_size 64" merge --local_dir "$c/megatron" \
  --hf-config "$c/hf"

c=$(copy_case qwen3moe_ep2_legacy)
sed -i 's/"num_local_experts": 4/"num_local_experts": 8/' "$c/hf/config.json"
expect_failure "config.json's experts disagree with the legacy args" 3 "experts 8 vs num_experts 4" \
  merge --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case qwen2_tp2_legacy)
cp -r "$c/megatron/iter_0000010/mp_rank_01" "$c/megatron/iter_0000010/mp_rank_02"
expect_failure "a rank directory the args' TP does not have" 3 "outside the run's TP 2" merge \
  --local_dir "$c/megatron" --hf-config "$c/hf"

c=$(copy_case llama_tp2pp2_uneven_legacy)
rm -r "$c/megatron/iter_0000010/mp_rank_00_001" "$c/megatron/iter_0000010/mp_rank_01_001"
expect_failure "a missing pipeline stage" 3 "pipeline stage" merge --local_dir "$c/megatron" \
  --hf-config "$c/hf"

expect_failure "a checkpoint holding only optimizer state" 3 \
  "its 3 tensors are all optimizer or scheduler state" merge --local_dir \
  "$FIXTURES/megatron_bad/optimizer_only" --hf-config "$MEG/qwen2_tp2_dist/hf"

expect_failure "no config.json anywhere" 2 "--hf-config" merge --local_dir \
  "$MEG/qwen2_tp2_dist/megatron"

c=$(copy_case qwen2_tp2_dist)
echo 7 >"$c/megatron/latest_checkpointed_iteration.txt"
expect_failure "a tracker naming a missing iteration" 3 "iter_0000007, which is missing" merge \
  --local_dir "$c/megatron" --hf-config "$c/hf"

finish
