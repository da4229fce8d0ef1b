#!/usr/bin/env bash
# FSDP2 DTensor shards (2 CPU ranks, uneven Shard(0) pieces, saved per rank as verl does):
# inspect --json describes each piece as torch sees it; convert of one rank's file is refused
# (exit 3, naming the file) until merging lands.
source "$(dirname "$0")/lib.sh"

oracle "make_dtensor.py" "$WORK/dt" 2
for rank in 0 1; do
  f="$WORK/dt/model_world_size_2_rank_$rank.pt"
  run_ckpt "$WORK/inspect-$rank.json" inspect --json "$f"
  if [ "$RC" != 0 ]; then
    fail "inspect --json rank $rank exited $RC"; show "$WORK/inspect-$rank.json" 10
  elif oracle "check_dtensor_inspect.py" "$WORK/inspect-$rank.json" "$f" \
      >"$WORK/check-$rank.log" 2>&1; then
    pass "inspect rank $rank: $(tail -n 1 "$WORK/check-$rank.log")"
  else
    fail "inspect rank $rank:"; show "$WORK/check-$rank.log" 20
  fi
done
run_ckpt "$WORK/convert.log" convert "$WORK/dt/model_world_size_2_rank_0.pt" --target_dir "$WORK/out" --quiet
if [ "$RC" = 3 ] && grep -qF model_world_size_2_rank_0.pt "$WORK/convert.log" && [ ! -e "$WORK/out/model.safetensors" ]; then
  pass "convert of one DTensor rank file: exit 3, $(head -c 200 "$WORK/convert.log")"
else
  fail "convert of one DTensor rank file: exit $RC, expected 3 naming the file: $(head -c 300 "$WORK/convert.log")"
fi
finish
