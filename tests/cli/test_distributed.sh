#!/usr/bin/env bash
# Distributed merge (exec/distributed.h): `mpirun -n 4` from Debian's openmpi-bin (required),
# processes started with the variables torchrun and srun set, explicit --rank/--world-size, a
# crash and a resume, `ckptstream finalize`; and --threads. Every result must be byte-identical
# (cmp of every file: shards, index, manifest, side files) to a single-process run.
source "$(dirname "$0")/lib.sh"
SRC="$FIXTURES/fsdp/w4"
# 2KB shards: ten output files, so that every rank has some (w4 is ~16 kB of tensors).
MERGE=(merge --local_dir "$SRC" --max-shard-size 2KB)
WORLD=4

# The environment of this test must not look like a launcher's.
unset RANK WORLD_SIZE LOCAL_RANK OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE PMIX_RANK PMI_RANK \
  PMI_SIZE SLURM_PROCID SLURM_NTASKS SLURM_STEP_ID SLURM_STEPID SLURM_STEP_NUM_TASKS || true

# same_as_single DIR WHAT : DIR holds exactly the single-process files, byte for byte.
same_as_single() {
  local dir=$1 what=$2 bad=""
  if [ "$(cd "$dir" && find . | sort)" != "$(cd "$WORK/single" && find . | sort)" ]; then
    fail "$what: the files differ from a single-process run: $(diff <(cd "$dir" && find . | sort) \
      <(cd "$WORK/single" && find . | sort) | head -5 | tr '\n' ' ')"
    return
  fi
  while read -r f; do cmp -s "$dir/$f" "$WORK/single/$f" || bad="$bad $f"; done \
    < <(cd "$WORK/single" && find . -type f)
  if [ -z "$bad" ]; then pass "$what: byte-identical to a single-process run ($(find "$dir" -type f | wc -l) files)"
  else fail "$what: differs from a single-process run:$bad"; fi
}

# mtimes DIR : "name mtime" of DIR's shards.
mtimes() { find "$1" -maxdepth 1 -name '*.safetensors' -printf '%f %T@\n' | sort; }

# ranks DIR EXTRA... : runs one background process per rank with explicit --rank/--world-size;
# waits for all; logs in DIR.rank<R>(.err); exit codes in RCS.
ranks() {
  local out=$1; shift
  local pids=() r
  for r in $(seq 0 $((WORLD - 1))); do
    "$CKPT" "${MERGE[@]}" --target_dir "$out" --world-size $WORLD --rank "$r" "$@" \
      >"$out.rank$r" 2>"$out.rank$r.err" </dev/null &
    pids+=($!)
  done
  RCS=""
  for pid in "${pids[@]}"; do set +e; wait "$pid"; RCS="$RCS $?"; set -e; done
}

# --- the reference: one process, one thread ---------------------------------------------------
run_ckpt "$WORK/single.log" "${MERGE[@]}" --target_dir "$WORK/single" --threads 1 --quiet
[ "$RC" = 0 ] || { fail "single-process merge: exit $RC: $(head -c 300 "$WORK/single.log.err")"; finish; }
n=$(find "$WORK/single" -name 'model-*.safetensors' | wc -l)
[ "$n" -ge 8 ] && pass "single-process reference: $n shard files" || fail "only $n shard files"

# --- threads ----------------------------------------------------------------------------------
for t in 2 4 0; do
  run_ckpt "$WORK/threads$t.log" "${MERGE[@]}" --target_dir "$WORK/threads$t" --threads $t --quiet
  [ "$RC" = 0 ] && same_as_single "$WORK/threads$t" "--threads $t" || fail "--threads $t: exit $RC"
done

# --- mpirun -n 4 (Open MPI: OMPI_COMM_WORLD_RANK / _SIZE) --------------------------------------
if ! command -v mpirun >/dev/null; then
  fail "mpirun is not installed (Debian package openmpi-bin): the launcher test cannot run"
else
  set +e
  mpirun --allow-run-as-root --oversubscribe -n $WORLD "$CKPT" "${MERGE[@]}" \
    --target_dir "$WORK/mpi" >"$WORK/mpi.log" 2>"$WORK/mpi.log.err" </dev/null
  RC=$?
  set -e
  if [ "$RC" = 0 ]; then
    same_as_single "$WORK/mpi" "mpirun -n $WORLD"
    for r in 0 1 2 3; do
      grep -q "note: distributed run: rank $r of $WORLD (from Open MPI (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE))" \
        "$WORK/mpi.log.err" || fail "mpirun: rank $r did not say what it detected"
    done
    pass "mpirun: every rank printed what it detected"
    expect_rc 0 "verify the mpirun output" verify "$WORK/mpi"
  else
    fail "mpirun -n $WORLD merge: exit $RC: $(head -c 600 "$WORK/mpi.log.err")"
  fi
  # More ranks than files: ranks without a file say so and leave.
  set +e
  mpirun --allow-run-as-root --oversubscribe -n 12 "$CKPT" "${MERGE[@]}" \
    --target_dir "$WORK/mpi12" >"$WORK/mpi12.log" 2>"$WORK/mpi12.log.err" </dev/null
  RC=$?
  set -e
  if [ "$RC" = 0 ]; then
    same_as_single "$WORK/mpi12" "mpirun -n 12 (10 files)"
    grep -q "note: rank 1[01] has no file to write" "$WORK/mpi12.log.err" &&
      pass "mpirun -n 12: ranks 10 and 11 have no file" || fail "mpirun -n 12: no 'no file' note"
  else
    fail "mpirun -n 12 merge: exit $RC: $(head -c 600 "$WORK/mpi12.log.err")"
  fi
fi

# --- as torchrun starts them: RANK / WORLD_SIZE / LOCAL_RANK ------------------------------------
pids=()
for r in 0 1 2 3; do
  RANK=$r WORLD_SIZE=$WORLD LOCAL_RANK=$r LOCAL_WORLD_SIZE=$WORLD GROUP_RANK=0 \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 TORCHELASTIC_RUN_ID=none \
    "$CKPT" "${MERGE[@]}" --target_dir "$WORK/torchrun" >"$WORK/torchrun.$r" \
    2>"$WORK/torchrun.$r.err" </dev/null &
  pids+=($!)
done
RCS=""; for pid in "${pids[@]}"; do set +e; wait "$pid"; RCS="$RCS $?"; set -e; done
if [ "$RCS" = " 0 0 0 0" ]; then
  same_as_single "$WORK/torchrun" "torchrun variables"
  grep -q "rank 2 of 4 (from torchrun (RANK, WORLD_SIZE))" "$WORK/torchrun.2.err" &&
    pass "torchrun: detected" || fail "torchrun: no detection note: $(cat "$WORK/torchrun.2.err")"
else
  fail "torchrun variables: exits$RCS: $(cat "$WORK"/torchrun.*.err | head -c 600)"
fi

# --- as srun starts them: SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_ID ---------------------------
pids=()
for r in 0 1 2 3; do
  SLURM_JOB_ID=4242 SLURM_STEP_ID=0 SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 \
    SLURM_NTASKS=$WORLD SLURM_NPROCS=$WORLD SLURM_STEP_NUM_TASKS=$WORLD \
    "$CKPT" "${MERGE[@]}" --target_dir "$WORK/srun" >"$WORK/srun.$r" 2>"$WORK/srun.$r.err" \
    </dev/null &
  pids+=($!)
done
RCS=""; for pid in "${pids[@]}"; do set +e; wait "$pid"; RCS="$RCS $?"; set -e; done
if [ "$RCS" = " 0 0 0 0" ]; then
  same_as_single "$WORK/srun" "srun variables"
  grep -q "rank 3 of 4 (from Slurm srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS))" "$WORK/srun.3.err" &&
    pass "srun: detected" || fail "srun: no detection note: $(cat "$WORK/srun.3.err")"
else
  fail "srun variables: exits$RCS: $(cat "$WORK"/srun.*.err | head -c 600)"
fi

# --- an sbatch batch script (no srun step): one process doing everything, with a note ----------
SLURM_JOB_ID=4242 SLURM_PROCID=0 SLURM_NTASKS=$WORLD SLURM_NPROCS=$WORLD \
  run_ckpt "$WORK/sbatch.log" "${MERGE[@]}" --target_dir "$WORK/sbatch"
if [ "$RC" = 0 ]; then
  same_as_single "$WORK/sbatch" "sbatch script (SLURM_PROCID without SLURM_STEP_ID)"
  grep -q "note: SLURM_PROCID ignored: not inside an srun job step" "$WORK/sbatch.log.err" &&
    pass "sbatch: the Slurm variables are ignored with a note" ||
    fail "sbatch: no note: $(cat "$WORK/sbatch.log.err")"
else
  fail "sbatch-like run: exit $RC: $(head -c 300 "$WORK/sbatch.log.err")"
fi

# --- --dist none ignores the environment; bad values are usage errors ---------------------------
RANK=1 WORLD_SIZE=4 run_ckpt "$WORK/none.log" "${MERGE[@]}" --target_dir "$WORK/none" --dist none
[ "$RC" = 0 ] && same_as_single "$WORK/none" "--dist none under torchrun variables" ||
  fail "--dist none: exit $RC: $(head -c 300 "$WORK/none.log.err")"
expect_rc 2 "--rank without --world-size" "${MERGE[@]}" --target_dir "$WORK/bad" --rank 1
expect_rc 2 "--rank 4 --world-size 4" "${MERGE[@]}" --target_dir "$WORK/bad" --rank 4 --world-size 4
RANK=x WORLD_SIZE=2 expect_rc 2 "RANK=x" "${MERGE[@]}" --target_dir "$WORK/bad"
[ ! -e "$WORK/bad" ] && pass "usage errors write nothing" || fail "usage errors left $WORK/bad"

# --- explicit --rank / --world-size, background processes ---------------------------------------
ranks "$WORK/explicit"
[ "$RCS" = " 0 0 0 0" ] && same_as_single "$WORK/explicit" "--world-size 4 --rank R" ||
  fail "explicit ranks: exits$RCS: $(cat "$WORK"/explicit.rank*.err | head -c 600)"

# --- a crash and a resume ----------------------------------------------------------------------
# Ranks 0..2 run, rank 3 never does: rank 0 gives up waiting (exit 4) naming the missing files;
# no index or manifest is written, the markers stay.
out="$WORK/crash"
for r in 1 2; do
  run_ckpt "$out.first$r" "${MERGE[@]}" --target_dir "$out" --world-size $WORLD --rank $r
  [ "$RC" = 0 ] || fail "crash: rank $r: exit $RC: $(head -c 300 "$out.first$r.err")"
done
run_ckpt "$out.first0" "${MERGE[@]}" --target_dir "$out" --world-size $WORLD --rank 0 --wait-timeout 1
if [ "$RC" = 4 ] && grep -q "not complete yet" "$out.first0.err"; then
  pass "crash: rank 0 gives up after --wait-timeout (exit 4): $(grep -o "error: .*" "$out.first0.err" | head -c 200)"
else
  fail "crash: rank 0: exit $RC, expected 4 with 'not complete yet': $(head -c 300 "$out.first0.err")"
fi
[ ! -e "$out/ckptstream.manifest.json" ] && [ ! -e "$out/model.safetensors.index.json" ] &&
  pass "crash: no index or manifest in an incomplete run" || fail "crash: index or manifest written"
done_markers=$(find "$out/.ckptstream" -name '*.done' | wc -l)
shards=$(find "$out" -maxdepth 1 -name '*.safetensors' | wc -l)
[ "$done_markers" = "$shards" ] && [ "$shards" -gt 0 ] && [ "$shards" -lt "$n" ] &&
  pass "crash: $shards of $n files complete, each with its marker" ||
  fail "crash: $shards files, $done_markers markers (of $n)"
ls -a "$out" | grep -q '^.ckptstream-staging' && fail "crash: a staging directory was left" ||
  pass "crash: no staging directory left"
# finalize now fails the same way, and a rank that is already complete is refused nothing
expect_rc 4 "finalize before every rank is done" finalize --local_dir "$SRC" --max-shard-size 2KB \
  --target_dir "$out"
before=$(mtimes "$out")
sleep 1
# A model without --overwrite is refused only when complete: the resume needs no flag.
ranks "$out"
if [ "$RCS" = " 0 0 0 0" ]; then
  same_as_single "$out" "resume after a crash"
  # Ranks run at once: one that starts after rank 0 has finalized finds the model complete (and
  # writes nothing, as it must); otherwise it skips its complete files.
  for r in 0 1 2; do
    grep -q "note: rank $r skipped [0-9]* complete file(s) of an earlier run" "$out.rank$r.err" ||
      { [ "$r" != 0 ] && grep -q "the model of this plan is complete already" "$out.rank$r.err"; } ||
      fail "resume: rank $r did not skip its complete files: $(cat "$out.rank$r.err")"
  done
  grep -q "skipped" "$out.rank3.err" && fail "resume: rank 3 skipped files it never wrote" || true
  unchanged=$(join <(echo "$before") <(mtimes "$out") | awk '$2 == $3' | wc -l)
  [ "$unchanged" = "$shards" ] && pass "resume: the $shards complete files were not rewritten (mtimes)" ||
    fail "resume: only $unchanged of $shards complete files kept their mtime"
else
  fail "resume: exits$RCS: $(cat "$out".rank*.err | head -c 600)"
fi

# --- finalize: rank 0 gave up; the others finish later; `ckptstream finalize` completes ------------
out="$WORK/finalize"
run_ckpt "$out.r0" "${MERGE[@]}" --target_dir "$out" --world-size $WORLD --rank 0 --wait-timeout 0
[ "$RC" = 4 ] && pass "finalize: rank 0 alone exits 4" || fail "finalize: rank 0 alone: exit $RC"
for r in 1 2 3; do
  run_ckpt "$out.r$r" "${MERGE[@]}" --target_dir "$out" --world-size $WORLD --rank $r
  [ "$RC" = 0 ] || fail "finalize: rank $r: exit $RC"
done
run_ckpt "$out.fin" finalize --local_dir "$SRC" --max-shard-size 2KB --target_dir "$out"
[ "$RC" = 0 ] && same_as_single "$out" "ckptstream finalize" ||
  fail "finalize: exit $RC: $(head -c 300 "$out.fin.err")"
expect_rc 2 "finalize of a finished directory" finalize --local_dir "$SRC" --max-shard-size 2KB \
  --target_dir "$out"

# --- a complete model is not replaced by a distributed run without --overwrite ---------------------
# Another plan (here: another shard size) is refused; the same plan is complete already (a rank
# that comes after the others finished the run): nothing to do, nothing rewritten.
run_ckpt "$WORK/again" "${MERGE[@]}" --max-shard-size 3KB --target_dir "$WORK/explicit" \
  --world-size 2 --rank 1
[ "$RC" = 2 ] && pass "a complete model of another plan needs --overwrite (exit 2)" ||
  fail "re-run of another plan on a model: exit $RC"
before=$(mtimes "$WORK/explicit")
run_ckpt "$WORK/late" "${MERGE[@]}" --target_dir "$WORK/explicit" --world-size 2 --rank 1
if [ "$RC" = 0 ] && grep -q "complete already" "$WORK/late.err" &&
   [ "$before" = "$(mtimes "$WORK/explicit")" ]; then
  pass "a rank of the same plan after the run finished: exit 0, nothing rewritten"
else
  fail "late rank of the same plan: exit $RC: $(head -c 300 "$WORK/late.err")"
fi

# --- convert, distributed --------------------------------------------------------------------------
CONV=(convert "$FIXTURES/sample" --max-shard-size 20KB)
run_ckpt "$WORK/conv1.log" "${CONV[@]}" --target_dir "$WORK/conv1" --quiet
nconv=$(find "$WORK/conv1" -name '*.safetensors' | wc -l)
pids=()
for r in 0 1 2; do
  "$CKPT" "${CONV[@]}" --target_dir "$WORK/conv3" --world-size 3 --rank $r --quiet \
    >/dev/null 2>"$WORK/conv3.$r.err" </dev/null &
  pids+=($!)
done
RCS=""; for pid in "${pids[@]}"; do set +e; wait "$pid"; RCS="$RCS $?"; set -e; done
if [ "$RCS" = " 0 0 0" ] && diff -r "$WORK/conv1" "$WORK/conv3" >/dev/null; then
  pass "convert --world-size 3: identical to one process ($nconv files)"
else
  fail "convert --world-size 3: exits$RCS or differs: $(cat "$WORK"/conv3.*.err | head -c 400)"
fi

finish
