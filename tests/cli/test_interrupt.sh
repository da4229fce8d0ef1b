#!/usr/bin/env bash
# Interrupted and concurrent runs (README § Interrupted, concurrent and overwriting runs):
# SIGINT / SIGTERM / SIGHUP stop a merge with exit 130 / 143 / 129, say so and leave the target as
# it was; SIGKILL leaves a staging directory (or convert --to torch a temporary file) that verify
# reports and the next run removes; a second run into a target in use is refused naming the
# first, and verify says a run is writing there. The signal is sent while the run is frozen
# (SIGSTOP) with its staging directory made, so that it always lands mid-run.
source "$(dirname "$0")/lib.sh"

CKPT_DIR="$WORK/ckpt"
python3 "$REPO/bench/gen_ckpt.py" fsdp "$CKPT_DIR" --size 300MB >/dev/null
MERGE=(merge --local_dir "$CKPT_DIR" --threads 1)
M20=("${MERGE[@]}" --max-shard-size 20MB)

# start_frozen GLOB ARGS... : starts ckptstream ARGS in the background (stdout/stderr in
# $WORK/bg.log/.err) and freezes it (SIGSTOP) as soon as a path matching GLOB exists; PID is its
# pid, FROZEN=1 if that happened before it finished.
start_frozen() {
  local glob=$1; shift
  "$CKPT" "$@" >"$WORK/bg.log" 2>"$WORK/bg.log.err" </dev/null &
  PID=$!
  FROZEN=0
  for _ in $(seq 1 2000); do
    # shellcheck disable=SC2086
    if compgen -G "$glob" >/dev/null; then kill -STOP "$PID" 2>/dev/null && FROZEN=1; break; fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.005
  done
}

# finish_bg : resumes the background run and waits for it; its exit code in RC.
finish_bg() {
  kill -CONT "$PID" 2>/dev/null || true
  set +e
  wait "$PID"
  RC=$?
  set -e
}

# frozen_run GLOB OUTPUT ARGS... : start_frozen, tried again (a few times, OUTPUT removed
# between tries) if the run finished before it could be frozen; FROZEN=1 when it was.
frozen_run() {
  local glob=$1 output=$2; shift 2
  for _ in 1 2 3 4 5; do
    start_frozen "$glob" "$@"
    [ "$FROZEN" = 1 ] && return
    finish_bg
    rm -rf "$output"
  done
}

# interrupt SIGNAL TARGET ARGS... : a run of ARGS frozen mid-write, sent SIGNAL, resumed.
interrupt() {
  local sig=$1 target=$2; shift 2
  frozen_run "$target/.ckptstream-staging-*/*" "$target" "$@"
  if [ "$FROZEN" = 1 ]; then kill "-$sig" "$PID"; finish_bg; else RC=done-too-fast; fi
}

leftovers() { find "$1" -maxdepth 1 -name '.ckptstream*' 2>/dev/null | sort | tr '\n' ' '; }

# --- SIGINT, SIGTERM, SIGHUP: stopped, said so, nothing left ---------------------------------------
for pair in INT:130 TERM:143 HUP:129; do
  sig=${pair%:*} want=${pair#*:}
  out="$WORK/out-$sig"
  interrupt "$sig" "$out" "${M20[@]}" --target_dir "$out"
  if [ "$RC" = "$want" ] && grep -q "SIG$sig received: stopping" "$WORK/bg.log.err" &&
     grep -q "ckptstream: stopped: nothing of this run was left in $out" "$WORK/bg.log.err" &&
     [ ! -e "$out" ]; then
    pass "SIG$sig during a merge into a new directory: exit $want, said so, the directory removed"
  else
    fail "SIG$sig: exit $RC, left: $(ls -a "$out" 2>&1 | tr '\n' ' '): $(tail -c 300 "$WORK/bg.log.err")"
  fi
done

# --- SIGTERM during --overwrite: the earlier model stays whole ----------------------------------
old="$WORK/old"
run_ckpt "$WORK/old.log" "${MERGE[@]}" --target_dir "$old" --max-shard-size 50MB --quiet
[ "$RC" = 0 ] || fail "first merge: exit $RC"
interrupt TERM "$old" "${M20[@]}" --target_dir "$old" --overwrite
if [ "$RC" = 143 ] && [ -z "$(leftovers "$old")" ]; then
  expect_rc 0 "SIGTERM during --overwrite: exit 143, the earlier model verifies" verify "$old" --quiet
  expect_rc 0 "... and it is the earlier merge's" verify "$old" --source --local_dir "$CKPT_DIR" \
    --max-shard-size 50MB --quiet
else
  fail "SIGTERM during --overwrite: exit $RC, left: $(leftovers "$old")"
fi

# --- SIGKILL: the staging directory stays; verify reports it; the next run removes it -----------
out="$WORK/killed"
interrupt KILL "$out" "${M20[@]}" --target_dir "$out"
staging=$(find "$out" -maxdepth 1 -name '.ckptstream-staging-*' -type d | head -1)
if [ "$RC" = 137 ] && [ -n "$staging" ]; then
  pass "SIGKILL: $(basename "$staging")/ left"
  run_ckpt "$WORK/verify-killed" verify "$out"
  [ "$RC" = 1 ] && grep -q "$(basename "$staging")/: left by an interrupted run" "$WORK/verify-killed.err" &&
    pass "verify reports the staging directory as not part of the model (exit 1)" ||
    fail "verify after SIGKILL: exit $RC: $(cat "$WORK/verify-killed.err")"
  run_ckpt "$WORK/rerun" "${M20[@]}" --target_dir "$out"
  if [ "$RC" = 0 ] && grep -q "note: $out: removed $(basename "$staging")/ (.*), left by an interrupted run" "$WORK/rerun.err" &&
     [ -z "$(leftovers "$out")" ]; then
    pass "the next run removes it, says so, and completes"
    expect_rc 0 "... and the result verifies" verify "$out" --quiet
  else
    fail "re-run after SIGKILL: exit $RC, left $(leftovers "$out"): $(tail -c 300 "$WORK/rerun.err")"
  fi
else
  fail "SIGKILL: exit $RC, staging '$staging'"
fi

# --- convert --to torch: its temporary file ------------------------------------------------------
pt="$WORK/torch/model.pt"
mkdir -p "$WORK/torch"
frozen_run "$WORK/torch/.model.pt.tmp.*" "$pt" convert --to torch "$CKPT_DIR" --target-file "$pt"
kill -INT "$PID"; finish_bg
if [ "$RC" = 130 ] && [ -z "$(ls -A "$WORK/torch")" ] && grep -q "model.pt was not written" "$WORK/bg.log.err"; then
  pass "SIGINT during convert --to torch: exit 130, no temporary file, no model.pt"
else
  fail "SIGINT during convert --to torch: exit $RC, left: $(ls -A "$WORK/torch")"
fi
frozen_run "$WORK/torch/.model.pt.tmp.*" "$pt" convert --to torch "$CKPT_DIR" --target-file "$pt"
kill -KILL "$PID"; finish_bg
temp=$(ls -A "$WORK/torch")
run_ckpt "$WORK/torch-rerun" convert --to torch "$CKPT_DIR" --target-file "$pt"
if [ "$RC" = 0 ] && [ -n "$temp" ] && grep -q "note: removed $temp, left by an interrupted run" "$WORK/torch-rerun.err" &&
   [ "$(ls -A "$WORK/torch")" = model.pt ]; then
  pass "SIGKILL during convert --to torch leaves $temp; the next run removes it"
else
  fail "convert --to torch after SIGKILL: exit $RC, temp '$temp', now: $(ls -A "$WORK/torch")"
fi

# --- two runs into one target ------------------------------------------------------------------
out="$WORK/shared"
frozen_run "$out/.ckptstream-staging-*/*" "$out" "${M20[@]}" --target_dir "$out"
first=$PID
run_ckpt "$WORK/second" "${M20[@]}" --target_dir "$out" --overwrite
[ "$RC" = 4 ] && grep -q "$out is in use by another ckptstream run (pid $first on .*: merge, since" "$WORK/second.err" &&
  pass "a second merge into a target in use: exit 4, naming the first (pid $first)" ||
  fail "second merge: exit $RC: $(cat "$WORK/second.err")"
run_ckpt "$WORK/second-convert" convert "$FIXTURES/sample" --target_dir "$out" --overwrite
[ "$RC" = 4 ] && pass "a convert into it too (exit 4)" || fail "second convert: exit $RC"
run_ckpt "$WORK/verify-busy" verify "$out"
[ "$RC" = 1 ] && grep -q "a ckptstream run is writing into this directory now (pid $first" "$WORK/verify-busy.err" &&
  pass "verify while a run writes: exit 1, naming it" || fail "verify while busy: exit $RC: $(cat "$WORK/verify-busy.err")"
finish_bg
[ "$RC" = 0 ] && [ -z "$(leftovers "$out")" ] && pass "the first run completes, its lock file gone" ||
  fail "first run: exit $RC, left $(leftovers "$out")"
expect_rc 0 "... and its model verifies" verify "$out" --quiet

finish
