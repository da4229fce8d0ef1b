#!/usr/bin/env bash
# Command-line usage: --help of every command exits 0, usage errors exit 2.
source "$(dirname "$0")/lib.sh"

expect_rc 0 "ckptstream --help" --help
for cmd in convert inspect verify; do
  run_ckpt "$WORK/help-$cmd" "$cmd" --help
  if [ "$RC" != 0 ]; then fail "$cmd --help exited $RC"
  elif ! grep -qi "usage" "$WORK/help-$cmd" "$WORK/help-$cmd.err"; then fail "$cmd --help printed no usage: $(head -c 200 "$WORK/help-$cmd")"
  else pass "$cmd --help: exit 0"; fi
done
run_ckpt "$WORK/help-main" --help
for cmd in convert inspect verify; do
  grep -q "$cmd" "$WORK/help-main" || fail "ckptstream --help does not list the $cmd command"
done

sample="$FIXTURES/sample"
expect_rc 2 "no command" 
expect_rc 2 "unknown command" frobnicate
expect_rc 2 "unknown option of convert" convert "$sample" --target_dir "$WORK/o1" --bogus-option
expect_rc 2 "unknown option of inspect" inspect --bogus-option "$sample"
expect_rc 2 "unknown option of verify" verify --bogus-option "$WORK"
expect_rc 2 "convert without --target_dir" convert "$sample"
expect_rc 2 "convert without a source" convert --target_dir "$WORK/o2"
expect_rc 2 "convert --dtype int4" convert "$sample" --target_dir "$WORK/o3" --dtype int4
expect_rc 2 "convert --max-shard-size lots" convert "$sample" --target_dir "$WORK/o4" --max-shard-size lots
expect_rc 2 "verify without a directory" verify
for d in o1 o2 o3 o4; do
  [ ! -e "$WORK/$d" ] || [ -z "$(ls -A "$WORK/$d")" ] || fail "a usage error left files in $d"
done
finish
