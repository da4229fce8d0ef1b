#!/usr/bin/env bash
# `merge --backend fsdp` end to end on the committed verl FSDP2 fixtures (tests/fixtures/fsdp/,
# made by real torch: tools/fixtures/make_fsdp_fixtures.py), with `plan`, `test` and `verify`.
# No torch here: the expected full state dicts (expected.safetensors) were saved by torch; the
# bf16 references are made below by rounding float32 bits to nearest even (what torch's .to()
# does), in plain Python.
source "$(dirname "$0")/lib.sh"
FS="$FIXTURES/fsdp"
CASES="w1_fsdp w1_plain w2 w3 w4 hsdp shard1 tied bf16 critic empty mesh_reversed"

# plain-Python safetensors helpers (no numpy, no torch): tools/interop/st_pure.py
st() { python3 "$REPO/tools/interop/st_pure.py" "$@"; }

# ref_dir NAME SRC [DROP...] : $WORK/ref-NAME/model.safetensors = SRC minus the DROP tensors.
ref_dir() {
  local name=$1 src=$2; shift 2
  st subset "$src" "$WORK/ref-$name/model.safetensors" "$@"
  echo "$WORK/ref-$name"
}

# check_rc WANT DESCRIPTION LOG : RC (from run_ckpt) must be WANT.
check_rc() {
  if [ "$RC" = "$1" ]; then pass "$2"; else
    fail "$2: exit $RC, expected $1: $(head -c 400 "$3.err" 2>/dev/null) $(head -c 200 "$3")"; fi
}
# model_files DIR : the model files in DIR (none when DIR does not exist).
model_files() { [ -d "$1" ] && find "$1" -maxdepth 1 \( -name '*.safetensors' -o -name '*.index.json' \
                  -o -name 'ckptstream.manifest.json' \) | tr '\n' ' ' || true; }

# --- every model case ------------------------------------------------------------------------
for c in $CASES; do
  src="$FS/$c"
  drop=()
  # tied: config.json says tie_word_embeddings true, so lm_head.weight is not written (as
  # transformers' save_pretrained); the reference is the expected state dict without it.
  if [ "$c" = tied ]; then
    grep -q '"tie_word_embeddings": true' "$src/huggingface/config.json" \
      && pass "tied: config.json says tie_word_embeddings true" \
      || fail "tied: fixture config.json does not say tie_word_embeddings true"
    drop=(lm_head.weight)
  fi
  ref=$(ref_dir "$c" "$src/expected.safetensors" "${drop[@]}")
  out="$WORK/out-$c"

  run_ckpt "$WORK/merge-$c" merge --backend fsdp --local_dir "$src" --target_dir "$out" --dtype keep --quiet
  check_rc 0 "$c: merge --dtype keep" "$WORK/merge-$c"
  [ "$RC" = 0 ] || continue

  run_ckpt "$WORK/verify-$c" verify "$out" --reference "$ref"
  check_rc 0 "$c: verify OUT --reference expected (exact)" "$WORK/verify-$c"

  run_ckpt "$WORK/test-$c" test --backend fsdp --local_dir "$src" --test_hf_dir "$ref" --dtype keep
  check_rc 0 "$c: test --test_hf_dir expected (exact)" "$WORK/test-$c"

  run_ckpt "$WORK/source-$c" verify "$out" --source --backend fsdp --local_dir "$src" --dtype keep
  check_rc 0 "$c: verify OUT --source --local_dir" "$WORK/source-$c"

  # names: output == expected (minus dropped), and == the plan's
  if [ "$(st names "$out")" = "$(st names "$ref")" ]; then pass "$c: output tensor names == expected"
  else fail "$c: output names differ from expected: $(diff <(st names "$out") <(st names "$ref") | head -5 | tr '\n' ' ')"; fi
  run_ckpt "$WORK/plan-$c.json" plan --dry-run --backend fsdp --local_dir "$src" --dtype keep --json
  if [ "$RC" != 0 ]; then fail "$c: plan --dry-run --json exited $RC: $(head -c 300 "$WORK/plan-$c.json.err")"
  elif ! python3 -m json.tool "$WORK/plan-$c.json" >/dev/null 2>&1; then fail "$c: plan --json is not valid JSON"
  elif [ "$(st plan_names "$WORK/plan-$c.json")" != "$(st names "$out")" ]; then
    fail "$c: plan lists other tensors than merge wrote"
  elif ! st plan_sizes "$WORK/plan-$c.json" "$out"; then fail "$c: planned file sizes != written sizes"
  else pass "$c: plan --dry-run --json: valid JSON, same tensors and file sizes as the output"; fi

  # side files copied byte for byte
  if [ -f "$src/huggingface/config.json" ]; then
    cmp -s "$src/huggingface/config.json" "$out/config.json" \
      && pass "$c: huggingface/config.json copied byte for byte" || fail "$c: config.json not copied as is"
  fi

  # bf16: every float32 tensor rounded to nearest even, exactly
  run_ckpt "$WORK/merge-bf16-$c" merge --local_dir "$src" --target_dir "$out-bf16" --dtype bf16 --quiet
  check_rc 0 "$c: merge --dtype bf16" "$WORK/merge-bf16-$c"
  if [ "$RC" = 0 ]; then
    run_ckpt "$WORK/inspect-bf16-$c.json" inspect --json "$out-bf16"
    dtypes=$(st inspect_dtypes "$WORK/inspect-bf16-$c.json")
    [ "$dtypes" = bfloat16 ] && pass "$c: bf16 output holds only bfloat16 tensors" \
      || fail "$c: bf16 output dtypes: $dtypes"
    st to_bf16 "$src/expected.safetensors" "$WORK/ref-bf16-$c/model.safetensors" "${drop[@]}"
    run_ckpt "$WORK/verify-bf16-$c" verify "$out-bf16" --reference "$WORK/ref-bf16-$c"
    check_rc 0 "$c: bf16 output == expected rounded to bf16 (exact)" "$WORK/verify-bf16-$c"
  fi
done

# tied: lm_head.weight absent, the embedding equals the expected lm_head
if [ -f "$WORK/out-tied/model.safetensors" ]; then
  if st names "$WORK/out-tied" | grep -x lm_head.weight >/dev/null; then fail "tied: lm_head.weight written"
  else pass "tied: lm_head.weight not written"; fi
  st same "$WORK/out-tied" "$FS/tied/expected.safetensors" model.embed_tokens.weight lm_head.weight \
    && pass "tied: embed_tokens == the tied lm_head" || fail "tied: embed_tokens differs from lm_head"
fi
# --tie-word-embedding forces it on an untied config
run_ckpt "$WORK/force-tie" merge --local_dir "$FS/w2" --target_dir "$WORK/out-force-tie" --dtype keep \
  --tie-word-embedding --quiet
check_rc 0 "w2 --tie-word-embedding" "$WORK/force-tie"
if [ "$RC" = 0 ]; then
  st names "$WORK/out-force-tie" | grep -x lm_head.weight >/dev/null && fail "--tie-word-embedding: lm_head.weight written" \
    || pass "--tie-word-embedding: lm_head.weight not written"
fi
# critic: score.* merged as they are, no lm_head
if [ -d "$WORK/out-critic" ]; then
  names=$(st names "$WORK/out-critic" | tr '\n' ' ')
  case "$names" in *score.bias*score.weight*) pass "critic: score.weight and score.bias written" ;;
    *) fail "critic: no score.* in $names" ;; esac
  run_ckpt "$WORK/critic-vm" test --local_dir "$FS/critic" --test_hf_dir "$WORK/ref-critic" --dtype keep --is-value-model
  check_rc 0 "critic: test --is-value-model" "$WORK/critic-vm"
fi

# --dtype auto: the bf16 case (config torch_dtype bfloat16) keeps bf16; w2 (float32) keeps float32;
# a float32 checkpoint whose config says bfloat16 becomes bf16 (as verl's output)
run_ckpt "$WORK/auto-w2" merge --local_dir "$FS/w2" --target_dir "$WORK/out-auto-w2" --quiet
run_ckpt "$WORK/verify-auto-w2" verify "$WORK/out-auto-w2" --reference "$WORK/ref-w2"
check_rc 0 "w2 --dtype auto (config float32) == expected float32" "$WORK/verify-auto-w2"
cp -r "$FS/w2" "$WORK/w2-cfgbf16"
sed -i 's/"torch_dtype": "float32"/"torch_dtype": "bfloat16"/' "$WORK/w2-cfgbf16/huggingface/config.json"
run_ckpt "$WORK/auto-bf16" merge --local_dir "$WORK/w2-cfgbf16" --target_dir "$WORK/out-auto-bf16" --quiet
run_ckpt "$WORK/verify-auto-bf16" verify "$WORK/out-auto-bf16" --reference "$WORK/ref-bf16-w2"
check_rc 0 "float32 shards + config bfloat16, --dtype auto == expected in bf16" "$WORK/verify-auto-bf16"

# several output files: --max-shard-size
run_ckpt "$WORK/sharded" merge --local_dir "$FS/w3" --target_dir "$WORK/out-sharded" --dtype keep \
  --max-shard-size 4KB --quiet
check_rc 0 "w3 --max-shard-size 4KB" "$WORK/sharded"
if [ -f "$WORK/out-sharded/model.safetensors.index.json" ]; then
  n=$(find "$WORK/out-sharded" -name 'model-*-of-*.safetensors' | wc -l)
  [ "$n" -gt 1 ] && pass "w3 4KB shards: $n files + index" || fail "w3 4KB shards: $n files"
  run_ckpt "$WORK/verify-sharded" verify "$WORK/out-sharded" --reference "$WORK/ref-w3"
  check_rc 0 "sharded output == expected" "$WORK/verify-sharded"
  run_ckpt "$WORK/test-sharded-ref" test --local_dir "$FS/w3" --test_hf_dir "$WORK/out-sharded" --dtype keep
  check_rc 0 "test against a sharded reference (index + 4KB shards)" "$WORK/test-sharded-ref"
  run_ckpt "$WORK/test-sharded-other" test --local_dir "$FS/critic" --test_hf_dir "$WORK/out-sharded" --dtype keep
  check_rc 1 "test of the critic against the sharded LM reference: a mismatch" "$WORK/test-sharded-other"
else
  fail "w3 --max-shard-size 4KB wrote no index"
fi

# --- input layouts -----------------------------------------------------------------------------
# no fsdp_config.json: W from the file names
cp -r "$FS/w2" "$WORK/w2-noconfig"; rm "$WORK/w2-noconfig/fsdp_config.json"
run_ckpt "$WORK/noconfig" merge --local_dir "$WORK/w2-noconfig" --target_dir "$WORK/out-noconfig" --dtype keep --quiet
run_ckpt "$WORK/verify-noconfig" verify "$WORK/out-noconfig" --reference "$WORK/ref-w2"
check_rc 0 "w2 without fsdp_config.json (W from the file names) == expected" "$WORK/verify-noconfig"
# the old names model_rank_R.pt
mkdir -p "$WORK/w2-old"; cp -r "$FS/w2/huggingface" "$WORK/w2-old/"
for r in 0 1; do cp "$FS/w2/model_world_size_2_rank_$r.pt" "$WORK/w2-old/model_rank_$r.pt"; done
run_ckpt "$WORK/old" merge --local_dir "$WORK/w2-old" --target_dir "$WORK/out-old" --dtype keep --quiet
run_ckpt "$WORK/verify-old" verify "$WORK/out-old" --reference "$WORK/ref-w2"
check_rc 0 "w2 as model_rank_R.pt (old names) == expected" "$WORK/verify-old"
# optimizer and extra_state files are never opened (garbage here), side files copied
cp -r "$FS/w2" "$WORK/w2-extra"
for r in 0 1; do
  printf 'not a torch file' >"$WORK/w2-extra/optim_world_size_2_rank_$r.pt"
  printf 'not a torch file' >"$WORK/w2-extra/extra_state_world_size_2_rank_$r.pt"
done
printf '{"bos_token_id": 1}\n' >"$WORK/w2-extra/huggingface/generation_config.json"
printf '{"model_max_length": 64}\n' >"$WORK/w2-extra/huggingface/tokenizer_config.json"
printf '{"version": "1.0"}\n' >"$WORK/w2-extra/huggingface/tokenizer.json"
run_ckpt "$WORK/extra" merge --local_dir "$WORK/w2-extra" --target_dir "$WORK/out-extra" --dtype keep --quiet
check_rc 0 "w2 with unreadable optim/extra_state files beside it" "$WORK/extra"
for f in generation_config.json tokenizer_config.json tokenizer.json; do
  cmp -s "$WORK/w2-extra/huggingface/$f" "$WORK/out-extra/$f" && pass "side file $f copied" \
    || fail "side file $f not copied byte for byte"
done

# verl's spellings of the flags
run_ckpt "$WORK/verl-flags" merge --backend fsdp --local-dir "$FS/w2" --target-dir "$WORK/out-verl-flags" \
  --dtype keep --tie_word_embedding --is_value_model --trust-remote-code --use_cpu_initialization --quiet
check_rc 0 "verl spellings --local-dir --target-dir --tie_word_embedding --is_value_model --trust-remote-code --use_cpu_initialization" "$WORK/verl-flags"
run_ckpt "$WORK/verl-flags2" merge --backend fsdp --local_dir "$FS/critic" --target_dir "$WORK/out-verl-flags2" \
  --dtype keep --tie-word-embedding --is-value-model --trust_remote_code --use-cpu-initialization --quiet
check_rc 0 "the other spellings --tie-word-embedding --is-value-model --trust_remote_code --use-cpu-initialization" "$WORK/verl-flags2"
run_ckpt "$WORK/verify-verl-flags2" verify "$WORK/out-verl-flags2" --reference "$WORK/ref-critic"
check_rc 0 "critic merged with the verl flags == expected" "$WORK/verify-verl-flags2"

# an existing model in the target: refused without --overwrite, replaced with it
run_ckpt "$WORK/again" merge --local_dir "$FS/w2" --target_dir "$WORK/out-w2" --dtype keep --quiet
{ [ "$RC" != 0 ] && [ "$RC" -lt 124 ]; } && pass "merge into a target holding a model: exit $RC" \
  || fail "merge into a target holding a model: exit $RC, expected a refusal"
run_ckpt "$WORK/overwrite" merge --local_dir "$FS/w3" --target_dir "$WORK/out-w2" --dtype keep --overwrite --quiet
run_ckpt "$WORK/verify-overwrite" verify "$WORK/out-w2" --reference "$WORK/ref-w3"
check_rc 0 "--overwrite replaces the model" "$WORK/verify-overwrite"

# --- errors: exit 3, the tensor or file named, no model file written ---------------------------
# expect_merge_error NAME WANT_RC SRC MENTION... : merge SRC fails with WANT_RC ("nonzero": any
# error), naming one of MENTION, and writes no model file.
expect_merge_error() {
  local name=$1 want=$2 src=$3; shift 3
  local out="$WORK/err-out-$name" log="$WORK/err-$name"
  run_ckpt "$log" merge --backend fsdp --local_dir "$src" --target_dir "$out" --dtype keep --quiet
  local msg; msg=$(cat "$log" "$log.err" | head -c 400 | tr '\n' ' ')
  local named=0 m
  for m in "$@"; do grep -qF -- "$m" "$log" "$log.err" && named=1; done
  if [ "$want" = nonzero ] && { [ "$RC" = 0 ] || [ "$RC" -ge 124 ]; }; then fail "$name: exit $RC, expected an error: $msg"
  elif [ "$want" != nonzero ] && [ "$RC" != "$want" ]; then fail "$name: exit $RC, expected $want: $msg"
  elif [ "$named" = 0 ]; then fail "$name: message names none of '$*': $msg"
  elif [ -n "$(model_files "$out")" ]; then fail "$name: wrote $(model_files "$out")"
  else pass "$name: exit $RC, '$msg'"; fi
  # plan must refuse it too
  run_ckpt "$log.plan" plan --dry-run --local_dir "$src" --dtype keep
  { [ "$RC" != 0 ] && [ "$RC" -lt 124 ]; } && pass "$name: plan refuses it too (exit $RC)" \
    || fail "$name: plan exited $RC"
}
expect_merge_error err_partial 3 "$FS/err_partial" score.weight
expect_merge_error err_strided_shard 3 "$FS/err_strided_shard" score.weight
expect_merge_error err_tp 3 "$FS/err_tp" score.weight
expect_merge_error err_buffer_differs 3 "$FS/err_buffer_differs" model.layers.0.layer_scalar
expect_merge_error err_missing_key 3 "$FS/err_missing_key" lm_head.weight
grep -qi 'placement' "$WORK/err-err_partial.err" && pass "err_partial: says 'placement'" \
  || fail "err_partial: message does not speak of the placement: $(head -c 300 "$WORK/err-err_partial.err")"

cp -r "$FS/w3" "$WORK/w3-missing"; rm "$WORK/w3-missing/model_world_size_3_rank_1.pt"
expect_merge_error missing_rank 3 "$WORK/w3-missing" model_world_size_3_rank_1.pt
cp -r "$FS/w3" "$WORK/w3-cut"
head -c 9000 "$FS/w3/model_world_size_3_rank_2.pt" >"$WORK/w3-cut/model_world_size_3_rank_2.pt"
expect_merge_error truncated_rank nonzero "$WORK/w3-cut" model_world_size_3_rank_2.pt
cp -r "$FS/w3" "$WORK/w3-mixed"   # rank 2 of another run (W=2): shapes do not tile
cp "$FS/w2/model_world_size_2_rank_1.pt" "$WORK/w3-mixed/model_world_size_3_rank_2.pt"
expect_merge_error mismatched_ranks 3 "$WORK/w3-mixed" model_world_size_3_rank_2.pt rank 2
cp -r "$FS/w2" "$WORK/w2-says3"   # fsdp_config.json says 3 ranks, 2 files
printf '{\n    "FSDP_version": 2,\n    "world_size": 3\n}' >"$WORK/w2-says3/fsdp_config.json"
expect_merge_error world_size_3_of_2 3 "$WORK/w2-says3" model_world_size_3_rank_0.pt "world_size 3"
mkdir -p "$WORK/no-shards"; cp -r "$FS/w2/huggingface" "$WORK/no-shards/"
expect_merge_error no_rank_files 3 "$WORK/no-shards" "$WORK/no-shards"

# --hf_upload_path without `hf` / `huggingface-cli` on PATH: fails before any work
mkdir -p "$WORK/empty-path"
set +e
PATH="$WORK/empty-path" "$CKPT" merge --local_dir "$FS/w2" --target_dir "$WORK/out-upload" --dtype keep \
  --hf_upload_path x/y --quiet >"$WORK/upload" 2>"$WORK/upload.err" </dev/null
RC=$?
set -e
if [ "$RC" = 0 ] || [ "$RC" -ge 124 ]; then fail "--hf_upload_path without hf: exit $RC"
elif [ -e "$WORK/out-upload" ]; then fail "--hf_upload_path without hf: target created before failing"
elif ! grep -qE 'hf|huggingface-cli' "$WORK/upload.err" "$WORK/upload"; then fail "--hf_upload_path without hf: message does not say what is missing"
else pass "--hf_upload_path without hf: exit $RC before any work, '$(head -c 200 "$WORK/upload.err" | tr '\n' ' ')'"; fi

# usage errors: exit 2
expect_rc 2 "merge without --target_dir" merge --local_dir "$FS/w2"
expect_rc 2 "merge --backend megatron-ish" merge --backend nonsense --local_dir "$FS/w2" --target_dir "$WORK/x"
expect_rc 2 "merge --dtype int3" merge --local_dir "$FS/w2" --target_dir "$WORK/x" --dtype int3
finish
