#!/usr/bin/env bash
# convert --to megatron (issue 15): Hugging Face models (the references of the real
# megatron-core fixtures, one per family table) written as Megatron checkpoints in every layout
# (TP 1/2/4, PP 2 even and uneven, VPP, EP 2, ETP, torch_dist and legacy, te and local specs),
# merged back by ckptstream's reader: byte-identical to the model transformers saved. Also the
# directory layouts, verl's converter spelling, sharded and packed-expert inputs, verify, and bad
# input (clear error, nothing in the target). What real megatron-core makes of these files is
# tests/interop/test_megatron_write.sh's and tools/interop/megatron_load_matrix.sh's job.
source "$(dirname "$0")/lib.sh"
MEG="$FIXTURES/megatron"

# family fixture | layouts its sizes allow
families=(
  "qwen2_tp2_dist|--tp 1;--tp 2;--tp 2 --pp 2;--pp 2"
  "qwen3_tp4_dist|--tp 4;--pp 2;--tp 2 --pp 2"
  "llama_tp2pp2_uneven_dist|--pp 2 --first-stage-layers 1;--tp 2 --pp 2 --first-stage-layers 1"
  "qwen3_pp2vpp2_dist|--pp 2 --vpp 2;--tp 2 --pp 2 --vpp 2;--pp 4"
  "mixtral_tp2ep2_dist|--ep 2;--tp 2 --ep 2;--tp 2 --ep 2 --etp 2;--pp 2 --ep 2"
  "qwen2moe_tp2_dist|--tp 2;--ep 2;--tp 2 --ep 2 --etp 2"
  "qwen3moe_ep2_dist|--ep 2;--pp 2 --ep 2;--tp 2 --etp 2"
  "deepseek_v3_mtp_ep2_dist|--ep 2;--tp 2;--pp 3 --first-stage-layers 1 --last-stage-layers 1;--tp 2 --ep 2"
  "glm45_ep2_dist|--ep 2;--tp 2 --pp 3;--tp 2 --ep 2 --etp 2"
  "qwen25vl_tp2_dist|--tp 2;--tp 2 --pp 2"
)
trips=0
for entry in "${families[@]}"; do
  fixture=${entry%%|*}
  hf="$MEG/$fixture/hf"
  IFS=';' read -r -a layouts <<<"${entry#*|}"
  for layout in "${layouts[@]}"; do
    for format in torch_dist torch; do
      for spec in te local; do
        out="$WORK/rt" back="$WORK/rt-hf"
        rm -rf "$out" "$back"
        # shellcheck disable=SC2086
        run_ckpt "$WORK/rt.log" convert --to megatron "$hf" --target_dir "$out" $layout \
          --format "$format" --layer-spec "$spec" --quiet
        what="$fixture $layout $format $spec"
        if [ "$RC" != 0 ]; then fail "$what: convert exited $RC: $(head -c 300 "$WORK/rt.log.err")"; continue; fi
        run_ckpt "$WORK/rt.log" merge --local_dir "$out" --hf-config "$hf" --target_dir "$back" \
          --quiet
        if [ "$RC" != 0 ]; then fail "$what: merge exited $RC: $(head -c 300 "$WORK/rt.log.err")"; continue; fi
        if cmp -s "$back/model.safetensors" "$hf/model.safetensors"; then
          trips=$((trips + 1))
        else
          fail "$what: the round trip differs from the Hugging Face model"
        fi
      done
    done
  done
done
[ "$trips" -ge 110 ] && pass "$trips round trips byte-identical to transformers' model.safetensors" ||
  fail "only $trips round trips"

# The two directory layouts, and what is in them.
hf="$MEG/qwen2_tp2_dist/hf"
expect_rc 0 "megatron-lm layout" convert --to megatron "$hf" --target_dir "$WORK/lm" --tp 2
[ "$(cat "$WORK/lm/latest_checkpointed_iteration.txt")" = release ] &&
  [ -f "$WORK/lm/release/metadata.json" ] && [ -f "$WORK/lm/release/.metadata" ] &&
  [ -f "$WORK/lm/release/__0_0.distcp" ] && [ -f "$WORK/lm/release/__1_0.distcp" ] &&
  grep -q '"sharded_backend": "torch_dist"' "$WORK/lm/release/metadata.json" &&
  pass "megatron-lm layout: tracker 'release', release/ holds metadata.json, .metadata, a file per rank" ||
  fail "megatron-lm layout: $(find "$WORK/lm" | sort | tr '\n' ' ')"
python3 - "$WORK/lm/ckptstream.manifest.json" <<'PY' && pass "the manifest pins every rank file and each chunk once" || fail "manifest"
import json, sys
m = json.load(open(sys.argv[1]), object_pairs_hook=lambda pairs: (
    (_ for _ in ()).throw(ValueError("duplicate " + pairs[0][0]))
    if len({k for k, _ in pairs}) != len(pairs) else dict(pairs)))
files = m["files"]
assert set(files) == {"release/__0_0.distcp", "release/__1_0.distcp"}, files
assert sum(len(f["tensors"]) for f in files.values()) == 33
assert {"release/.metadata", "release/metadata.json", "latest_checkpointed_iteration.txt"} <= set(m["other_files"])
PY
# verl's converter spelling (scripts/converter_hf_to_mcore.py), flat: dist_checkpointing_path.
expect_rc 0 "verl spelling" convert --to megatron --hf_model_path "$hf" --output_path \
  "$WORK/verl" --use_cpu_initialization --layout flat
[ -f "$WORK/verl/metadata.json" ] && [ ! -e "$WORK/verl/latest_checkpointed_iteration.txt" ] &&
  pass "flat layout: the checkpoint files in the target" || fail "flat layout: $(ls -A "$WORK/verl")"
expect_rc 0 "legacy files" convert --to megatron "$hf" --target_dir "$WORK/leg" --tp 2 --pp 2 \
  --format torch
[ -f "$WORK/leg/release/mp_rank_01_001/model_optim_rng.pt" ] &&
  pass "legacy: mp_rank_TT_PPP/model_optim_rng.pt" || fail "legacy: $(find "$WORK/leg" | sort | tr '\n' ' ')"
expect_rc 2 "writing over a checkpoint without --overwrite" convert --to megatron "$hf" \
  --target_dir "$WORK/lm" --tp 2 --quiet

# Sharded and transformers-5 packed-expert inputs (made by ckptstream's own merge).
moe="$MEG/qwen3moe_ep2_dist"
expect_rc 0 "sharded input made" merge --local_dir "$moe/megatron" --hf-config "$moe/hf" \
  --target_dir "$WORK/sharded" --max-shard-size 20KB --quiet
expect_rc 0 "packed input made" merge --local_dir "$moe/megatron" --hf-config "$moe/hf" \
  --target_dir "$WORK/packed" --keep-packed-experts --quiet
for input in sharded packed; do
  expect_rc 0 "$input input: convert" convert --to megatron "$WORK/$input" --target_dir \
    "$WORK/$input-meg" --ep 2 --quiet
  expect_rc 0 "$input input: merge back" merge --local_dir "$WORK/$input-meg" --hf-config \
    "$moe/hf" --target_dir "$WORK/$input-back" --quiet
  cmp -s "$WORK/$input-back/model.safetensors" "$moe/hf/model.safetensors" &&
    pass "$input input: round trip byte-identical" || fail "$input input: round trip differs"
done

# A value model (verl's critic: score.weight, one row), and torch .bin input.
VAL="$MEG/qwen2_value_tp2_dist/hf"
for format in torch_dist torch; do
  expect_rc 0 "value model ($format)" convert --to megatron "$VAL" --target_dir "$WORK/val-$format" \
    --tp 2 --format "$format"
  expect_rc 0 "value model merged back ($format)" merge --local_dir "$WORK/val-$format" \
    --hf-config "$VAL" --is-value-model --target_dir "$WORK/val-$format-hf"
  cmp -s "$WORK/val-$format-hf/model.safetensors" "$VAL/model.safetensors" &&
    pass "value model ($format): round trip byte-identical" || fail "value model ($format) differs"
done
expect_rc 0 "pytorch_model.bin input" convert --to megatron "$FIXTURES/sample" --target_dir \
  "$WORK/bin" --tp 2
expect_rc 0 "  merged back" merge --local_dir "$WORK/bin" --hf-config "$FIXTURES/sample" \
  --target_dir "$WORK/bin-hf"
expect_rc 0 "  the torch file's model, cast as config.json says" convert "$FIXTURES/sample" \
  --target_dir "$WORK/bin-ref"
expect_rc 0 "  equal" verify "$WORK/bin-hf" --reference "$WORK/bin-ref"

# A distributed run: two processes write their rank files; the result is byte for byte one
# process's.
expect_rc 0 "one process" convert --to megatron "$moe/hf" --target_dir "$WORK/single" --ep 2 --tp 2
"$CKPT" convert --to megatron "$moe/hf" --target_dir "$WORK/dist" --ep 2 --tp 2 --world-size 2 \
  --rank 1 --quiet </dev/null >"$WORK/rank1.log" 2>&1 &
rank1=$!
expect_rc 0 "rank 0 of 2" convert --to megatron "$moe/hf" --target_dir "$WORK/dist" --ep 2 --tp 2 \
  --world-size 2 --rank 0
wait "$rank1" && pass "rank 1 of 2: exit 0" || fail "rank 1: $(head -c 300 "$WORK/rank1.log")"
diff -r "$WORK/single" "$WORK/dist" >/dev/null &&
  pass "two ranks wrote what one process writes, byte for byte" ||
  fail "distributed output differs: $(diff -rq "$WORK/single" "$WORK/dist" | head -3)"

# --dry-run: the plan, nothing written.
expect_rc 0 "--dry-run" convert --to megatron "$hf" --tp 2 --pp 2 --dry-run
run_ckpt "$WORK/dry.json" convert --to megatron "$hf" --tp 2 --dry-run --json -q
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["files"]) == 2' \
  "$WORK/dry.json" && pass "--dry-run --json: two rank files" || fail "--dry-run --json"

# Bad input: a clear message, a non-zero exit, nothing in the target.
bad_case() {  # bad_case WANT_RC DESCRIPTION PATTERN SOURCE FLAGS...
  local want=$1 what=$2 pattern=$3 src=$4; shift 4
  rm -rf "$WORK/bad-out"
  run_ckpt "$WORK/bad.log" convert --to megatron "$src" --target_dir "$WORK/bad-out" "$@"
  if [ "$RC" = "$want" ] && grep -q -- "$pattern" "$WORK/bad.log.err" && [ ! -e "$WORK/bad-out" ]; then
    pass "$what: exit $RC, says so, nothing written"
  else
    fail "$what: exit $RC (want $want), target $(ls -A "$WORK/bad-out" 2>&1 | head -c 100): $(head -c 300 "$WORK/bad.log.err")"
  fi
}
bad_case 2 "TP not dividing the query groups" "does not divide the 2 query groups" "$hf" --tp 4
bad_case 2 "TP not dividing the heads" "does not divide the 4 attention heads" "$hf" --tp 3
bad_case 2 "EP not dividing the experts" "does not divide the 4 experts" "$moe/hf" --ep 3
bad_case 2 "EP for a dense model" "without experts" "$hf" --ep 2
bad_case 2 "PP not splitting the layers" "do not split evenly" "$hf" --pp 3
cp -r "$hf" "$WORK/layers"
sed -i 's/"num_hidden_layers": 2/"num_hidden_layers": 3/' "$WORK/layers/config.json"
bad_case 3 "config.json with more layers than the tensors" "lacks what" "$WORK/layers"
cp -r "$hf" "$WORK/family"
sed -i 's/"model_type": "qwen2"/"model_type": "gpt_neox"/' "$WORK/family/config.json"
bad_case 3 "an unknown family" "there are: llama" "$WORK/family"
cp -r "$WORK/sharded" "$WORK/missing"
rm "$(ls "$WORK"/missing/model-0000*-of-*.safetensors | head -n 1)"
bad_case 4 "a missing shard of a sharded model" "cannot open" "$WORK/missing" --ep 2
bad_case 2 "no config.json" "no config.json" "$MEG/qwen2_tp2_dist/megatron"
finish
