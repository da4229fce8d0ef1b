#!/usr/bin/env bash
# DCP checkpoints (issue 4), on fixtures made by real torch (tools/fixtures/make_dcp_fixtures.py):
# merge to safetensors is byte-exact against torch's dcp_to_torch_save (expected.safetensors);
# convert --to torch works; bad checkpoints fail clearly and write nothing.
source "$(dirname "$0")/lib.sh"
DCP="$FIXTURES/dcp"
HF="$FIXTURES/fsdp/w3/huggingface"  # the same small model's config
# A private temporary directory, so the check that zstd scratch files are cleaned up sees only
# this test's.
export TMPDIR="$WORK/tmp"
mkdir -p "$TMPDIR"

reference_dir() {  # reference_dir CASE -> a directory holding its expected.safetensors
  local ref="$WORK/ref-${1//\//_}"
  mkdir -p "$ref"
  cp "$(find "$DCP/${1%%/*}" -name expected.safetensors | head -n 1)" "$ref/model.safetensors"
  printf '%s' "$ref"
}

for case in nested_w2 app_w3_bf16 plain rlinf_w4/global_step_2/actor sid_plain_w2 zstd_w2; do
  out="$WORK/out-${case//\//_}"
  expect_rc 0 "merge $case" merge --local_dir "$DCP/$case" --target_dir "$out" --dtype keep \
    --hf-config "$HF"
  expect_rc 0 "$case equals dcp_to_torch_save's tensors" verify "$out" --reference \
    "$(reference_dir "$case")"
  expect_rc 0 "$case: verify --source" verify "$out" --source --local_dir "$DCP/$case" \
    --dtype keep --hf-config "$HF"
  expect_rc 0 "$case: test" test --local_dir "$DCP/$case" --dtype keep --hf-config "$HF" \
    --test_hf_dir "$(reference_dir "$case")"
  [ -f "$out/config.json" ] && pass "$case: config.json copied from --hf-config" ||
    fail "$case: config.json missing"
done
[ -z "$(ls -A "$TMPDIR")" ] && pass "no scratch directory left behind" ||
  fail "scratch left in \$TMPDIR: $(ls "$TMPDIR")"

# Without a config: a clear error that names --hf-config, and nothing written.
run_ckpt "$WORK/noconfig" merge --local_dir "$DCP/plain" --target_dir "$WORK/noconfig-out"
[ "$RC" = 2 ] && grep -q -- "--hf-config" "$WORK/noconfig.err" &&
  pass "no config: exit 2 naming --hf-config" || fail "no config: exit $RC, $(cat "$WORK/noconfig.err")"
[ ! -e "$WORK/noconfig-out" ] && pass "no config: no target dir" || fail "no config: target created"

# An explicit prefix that matches nothing, and the detected one given explicitly.
expect_rc 0 "--prefix model" merge --local_dir "$DCP/nested_w2" --target_dir "$WORK/prefix" \
  --prefix model --hf-config "$HF" --dtype keep
expect_rc 0 "--prefix model gives the same tensors" verify "$WORK/prefix" --reference \
  "$(reference_dir nested_w2)"

# convert --to torch: one torch.save file of the model state dict.
expect_rc 0 "convert --to torch (zstd)" convert --to torch "$DCP/zstd_w2" --target-file \
  "$WORK/z/full.pt"
expect_rc 0 "inspect the written torch file" inspect "$WORK/z/full.pt"
expect_rc 0 "the torch file converts back to the expected safetensors" convert "$WORK/z/full.pt" \
  --target_dir "$WORK/z-st" --dtype keep
expect_rc 0 "round trip equals dcp_to_torch_save" verify "$WORK/z-st" --reference \
  "$(reference_dir zstd_w2)"
expect_rc 2 "convert --to torch refuses to overwrite" convert --to torch "$DCP/zstd_w2" \
  --target-file "$WORK/z/full.pt"

# Broken checkpoints (metadata mutated and pickled by torch itself: overlapping, missing and
# out-of-bounds chunks, unknown transforms), and a truncated .distcp: clear errors, nothing
# written.
for bad in "$DCP"/nested_w2/errors/*.metadata truncated; do
  name=$(basename "$bad" .metadata)
  ckpt="$WORK/ckpt-$name"
  mkdir -p "$ckpt"
  cp "$DCP"/nested_w2/__*.distcp "$DCP/nested_w2/.metadata" "$ckpt/"
  if [ "$bad" = truncated ]; then
    truncate -s 3000 "$ckpt/__1_0.distcp"
  else
    cp "$bad" "$ckpt/.metadata"
  fi
  out="$WORK/bad-$name"
  run_ckpt "$WORK/bad-$name.log" merge --local_dir "$ckpt" --target_dir "$out" --hf-config "$HF"
  if [ "$RC" = 3 ] && [ ! -e "$out" ]; then
    pass "$name: exit 3, nothing written: $(head -c 160 "$WORK/bad-$name.log.err")"
  else
    fail "$name: exit $RC (want 3), target exists: $([ -e "$out" ] && echo yes || echo no)"
  fi
done
finish
