#!/usr/bin/env bash
# convert --to megatron (issue 15) against real megatron-core: for every fixture megatron-core
# wrote (tests/fixtures/megatron, local layer spec), the Hugging Face model it was made from is
# converted at the same layout, and torch's own readers (sid oracle) compare the two checkpoints:
# torch_dist through DCP's FileSystemReader (every tensor key, global shape, dtype, chunk box and
# value, every _extra_state and common_state item key); legacy through torch.load (every rank
# file's state dicts: keys, dtypes, shapes, values, the args' sizes).
source "$(dirname "$0")/lib.sh"
SID_ROOT="${CKPTSTREAM_ORACLE_ROOT:-/var/cache/ckptstream-oracle}-sid"
trap 'cleanup; rmdir "$SID_ROOT$WORK" 2>/dev/null || true' EXIT
MEG="$REPO/tests/fixtures/megatron"
compared=0
for dir in "$MEG"/*; do
  c=$(basename "$dir")
  [ -f "$dir/case.json" ] || continue  # derived by torch, not written by megatron-core
  read -r fmt flags < <(python3 - "$dir/case.json" <<'PY'
import json, sys
case = json.load(open(sys.argv[1]))
flags = []
for key in ("tp", "pp", "vpp", "ep", "etp", "first_stage_layers"):
    if key in case:
        flags += ["--" + key.replace("_", "-"), str(case[key])]
print(case["fmt"], " ".join(flags))
PY
  )
  # mbridge's DeepSeek and Qwen2.5-VL providers do not pad the vocabulary; the others pad to
  # 16 x TP, as the fixtures' Megatron-LM arguments say.
  divisor=16
  case "$c" in deepseek* | qwen25vl*) divisor=1 ;; esac
  out="$WORK/out/$c"
  log="$(logname "$c").convert.log"
  # shellcheck disable=SC2086
  run_ckpt "$log" convert --to megatron "$dir/hf" --target_dir "$out" --layout flat \
    --layer-spec local --format "$fmt" --make-vocab-size-divisible-by "$divisor" $flags --quiet
  if [ "$RC" != 0 ]; then fail "$c: convert exited $RC:"; show "$log.err"; continue; fi
  mkdir -p "$WORK/real"
  cp -r "$(ls -d "$dir"/megatron/iter_*)" "$WORK/real/$c"
  script=compare_megatron_legacy.py
  [ "$fmt" = torch_dist ] && script=compare_megatron_dist.py
  log="$(logname "$c").compare.log"
  if (cd "$WORK" && "$REPO/tools/oracle-run.sh" --suite sid --bind "$WORK" -- \
    python3 "$PY/$script" "$out" "$WORK/real/$c") >"$log" 2>&1; then
    pass "$c ($fmt $flags): $(tail -n 1 "$log")"
    compared=$((compared + 1))
  else
    fail "$c: differs from what megatron-core wrote:"; show "$log" 30
  fi
done
[ "$compared" -ge 22 ] && pass "$compared checkpoints equal to megatron-core's" ||
  fail "only $compared checkpoints compared"
finish
