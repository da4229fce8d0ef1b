#!/usr/bin/env bash
# Hostile inputs and tampered outputs, through the command line: verify pins every header and side
# file; symbolic link loops, FIFOs, devices, expanding pickles, damaged zip records, renamed rank
# files and names safetensors cannot hold end as clear errors (the documented exit code, the path
# named, never a crash or a hang, nothing left in the target).
source "$(dirname "$0")/lib.sh"

W4="$FIXTURES/fsdp/w4"
HOSTILE="$FIXTURES/hostile"
LIMIT=30  # seconds: anything slower is a hang

# expect_error NAME WANT_RC MENTION ARGS... : ckptstream ARGS must exit WANT_RC ("any": any code
# from 1 to 4) within LIMIT seconds, its stderr must mention MENTION.
expect_error() {
  local name=$1 want=$2 mention=$3; shift 3
  local log="$WORK/log-$name"
  set +e
  timeout -s KILL "$LIMIT" "$CKPT" "$@" >"$log" 2>"$log.err" </dev/null
  RC=$?
  set -e
  local msg; msg=$(head -c 300 "$log.err" | tr '\n' ' ')
  if [ "$RC" = 137 ]; then fail "$name: still running after ${LIMIT}s (a hang)"
  elif [ "$want" = any ] && { [ "$RC" -lt 1 ] || [ "$RC" -gt 4 ]; }; then fail "$name: exit $RC: $msg"
  elif [ "$want" != any ] && [ "$RC" != "$want" ]; then fail "$name: exit $RC, expected $want: $msg"
  elif ! grep -qF -- "$mention" "$log.err"; then fail "$name: message does not mention '$mention': $msg"
  else pass "$name: exit $RC, '$msg'"; fi
}

# --- verify pins each header and side file ---------------------------------------------------------
out="$WORK/w4-bf16"
run_ckpt "$WORK/merge.log" merge --local_dir "$W4" --target_dir "$out" --dtype bf16 --quiet
[ "$RC" = 0 ] || { fail "merge of w4: exit $RC: $(head -c 300 "$WORK/merge.log.err")"; finish; }
expect_rc 0 "verify of a fresh merge" verify "$out" --quiet

# tamper DIR PYTHON : a copy of $out in DIR, then PYTHON edits DIR/model.safetensors's header
# (the header's length and its bytes elsewhere unchanged); prints the tensor it changed.
tamper() {
  rm -rf "$1" && cp -r "$out" "$1"
  python3 - "$1/model.safetensors" "$2" <<'PY'
import json, re, struct, sys
path, how = sys.argv[1], sys.argv[2]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
text = data[8:8 + n].decode()
header = json.loads(text)
if how == "dtype":  # BF16 -> F16 plus a space: same length, still valid JSON
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16")
    entry = '"%s":{"dtype":"BF16"' % name
    text = text.replace(entry, '"%s":{"dtype":"F16" ' % name, 1)
else:  # swap a 2-d shape [a,b] -> [b,a] with a != b
    name, a, b = next((k, v["shape"][0], v["shape"][1]) for k, v in header.items()
                      if k != "__metadata__" and len(v["shape"]) == 2 and v["shape"][0] != v["shape"][1])
    text = text.replace('"%s":{"dtype":"BF16","shape":[%d,%d]' % (name, a, b),
                        '"%s":{"dtype":"BF16","shape":[%d,%d]' % (name, b, a), 1)
assert len(text.encode()) == n
data[8:8 + n] = text.encode()
open(path, "wb").write(data)
print(name)
PY
}
tensor=$(tamper "$WORK/t-dtype" dtype)
expect_error verify-dtype-edit 1 "tensor $tensor has dtype F16, the manifest says BF16" verify "$WORK/t-dtype"
expect_error verify-source-dtype-edit 1 "tensor $tensor has dtype F16, the manifest says BF16" \
  verify "$WORK/t-dtype" --source --local_dir "$W4" --dtype bf16
tensor=$(tamper "$WORK/t-shape" shape)
expect_error verify-shape-swap 1 "tensor $tensor has shape" verify "$WORK/t-shape"
rm -rf "$WORK/t-extra" && cp -r "$out" "$WORK/t-extra"
cp "$out/model.safetensors" "$WORK/t-extra/model-00006-of-00005.safetensors"
expect_error verify-extra-shard 1 "model-00006-of-00005.safetensors: not part of the model" \
  verify "$WORK/t-extra"
rm -rf "$WORK/t-side" && cp -r "$out" "$WORK/t-side"
sed -i '0,/[a-z]/s//X/' "$WORK/t-side/config.json"  # one letter changed: same size
expect_error verify-side-file 1 "config.json: changed since it was written" verify "$WORK/t-side"
rm -rf "$WORK/t-staging" && cp -r "$out" "$WORK/t-staging"
mkdir "$WORK/t-staging/.ckptstream-staging-99999" && echo x >"$WORK/t-staging/.ckptstream-staging-99999/model.safetensors"
expect_error verify-staging-leftover 1 ".ckptstream-staging-99999/: left by an interrupted run" \
  verify "$WORK/t-staging"

# --- symbolic link loops: every command, as an argument and inside a directory --------------------
ln -s loop "$WORK/loop"
mkdir -p "$WORK/loopdir" && ln -s x "$WORK/loopdir/y" && ln -s y "$WORK/loopdir/x" &&
  ln -s model_world_size_1_rank_0.pt "$WORK/loopdir/model_world_size_1_rank_0.pt" 2>/dev/null || true
L="$WORK/loop"
expect_error loop-inspect any "$L" inspect "$L"
expect_error loop-inspect-dir any "loopdir" inspect "$WORK/loopdir"
expect_error loop-verify any "$L" verify "$L"
expect_error loop-verify-reference any "$L" verify "$out" --reference "$L"
expect_error loop-test any "$L" test --local_dir "$L" --test_hf_dir "$out"
expect_error loop-merge any "$L" merge --local_dir "$L" --target_dir "$WORK/o-loop1"
expect_error loop-plan any "$L" plan --dry-run --local_dir "$L"
expect_error loop-hf-config any "$L" merge --local_dir "$W4" --hf-config "$L" --target_dir "$WORK/o-loop2"
expect_error loop-target any "$L" merge --local_dir "$W4" --target_dir "$L"
expect_error loop-convert-torch-source any "$L" convert --to torch "$L" --target-file "$WORK/o.pt"
expect_error loop-convert-torch-target any "$L" convert --to torch "$FIXTURES/sample" --target-file "$L"
expect_error loop-convert any "$L" convert "$L" --target_dir "$WORK/o-loop3"
expect_error loop-convert-dir any "loopdir" convert "$WORK/loopdir" --target_dir "$WORK/o-loop4"

# --- FIFOs and devices where a file should be: refused at once, never waited on ------------------
rm -rf "$WORK/fifo-ckpt" && cp -r "$W4" "$WORK/fifo-ckpt"
rm "$WORK/fifo-ckpt/model_world_size_4_rank_1.pt" && mkfifo "$WORK/fifo-ckpt/model_world_size_4_rank_1.pt"
expect_error fifo-rank-file 3 "model_world_size_4_rank_1.pt: not a regular file (a FIFO)" \
  merge --local_dir "$WORK/fifo-ckpt" --target_dir "$WORK/o-fifo"
mkfifo "$WORK/fifo.pt"
expect_error fifo-convert 3 "fifo.pt: not a regular file (a FIFO)" convert "$WORK/fifo.pt" --target_dir "$WORK/o-fifo2"
expect_error fifo-inspect 3 "fifo.pt: not a regular file (a FIFO)" inspect "$WORK/fifo.pt"
rm -rf "$WORK/fifo-out" && cp -r "$out" "$WORK/fifo-out"
rm "$WORK/fifo-out/model.safetensors" && mkfifo "$WORK/fifo-out/model.safetensors"
expect_error fifo-verify 1 "model.safetensors: not a regular file (a FIFO)" verify "$WORK/fifo-out"
expect_error device-convert 3 "not a regular file (a character device)" convert /dev/zero --target_dir "$WORK/o-zero"
rm -rf "$WORK/fifo-config" && cp -r "$W4" "$WORK/fifo-config"
rm "$WORK/fifo-config/huggingface/config.json" && mkfifo "$WORK/fifo-config/huggingface/config.json"
expect_error fifo-config 3 "config.json: not a regular file (a FIFO)" \
  merge --local_dir "$WORK/fifo-config" --target_dir "$WORK/o-fifo3"
rm -rf "$WORK/dir-config" && cp -r "$W4" "$WORK/dir-config"
rm "$WORK/dir-config/huggingface/config.json" && mkdir "$WORK/dir-config/huggingface/config.json"
expect_error dir-config 3 "config.json: not a regular file (a directory)" \
  plan --dry-run --local_dir "$WORK/dir-config"

# --- pickles whose graphs expand: refused, fast, whatever the command -----------------------------
for f in shared_dicts_20 shared_long_key shared_state_dict; do
  expect_error "$f-inspect" 3 "state dict" inspect "$HOSTILE/$f.pt"
  expect_error "$f-convert" 3 "state dict" convert "$HOSTILE/$f.pt" --target_dir "$WORK/o-$f"
  expect_error "$f-convert-torch" 3 "state dict" \
    convert --to torch "$HOSTILE/$f.pt" --target-file "$WORK/o-$f.pt"
  [ ! -e "$WORK/o-$f" ] && [ ! -e "$WORK/o-$f.pt" ] && pass "$f: nothing written" || fail "$f: output left"
done
run_ckpt "$WORK/empty-shared" inspect "$HOSTILE/shared_dicts_empty.pt"
[ "$RC" = 0 ] && grep -q "0 tensors" "$WORK/empty-shared" && pass "10^20 paths without a tensor: listed, 0 tensors" ||
  fail "shared_dicts_empty.pt: exit $RC"

# --- damaged zip records: the CRC-32 names the file, the record and both values -----------------
rm -rf "$WORK/crc" && cp -r "$W4" "$WORK/crc"
python3 - "$WORK/crc/model_world_size_4_rank_2.pt" <<'PY'
import struct, sys, zipfile
path = sys.argv[1]
info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("/data/0"))
with open(path, "r+b") as f:
    f.seek(info.header_offset)
    head = f.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    at = info.header_offset + 30 + name_len + extra_len + 5
    f.seek(at); byte = f.read(1); f.seek(at); f.write(bytes([byte[0] ^ 0x01]))
PY
crc_msg="model_world_size_4_rank_2.pt: the zip record at bytes ["
expect_error crc-merge 3 "$crc_msg" merge --local_dir "$WORK/crc" --target_dir "$WORK/o-crc"
grep -qE "has CRC-32 0x[0-9a-f]{8}, but the archive records 0x[0-9a-f]{8}" "$WORK/log-crc-merge.err" &&
  pass "crc: both checksums named" || fail "crc: checksums not named: $(cat "$WORK/log-crc-merge.err")"
[ ! -e "$WORK/o-crc" ] && pass "crc: nothing written" || fail "crc: output left: $(ls -a "$WORK/o-crc")"
expect_error crc-verify-source 3 "$crc_msg" verify "$out" --source --local_dir "$WORK/crc" --dtype bf16
expect_error crc-test 3 "$crc_msg" test --local_dir "$WORK/crc" --test_hf_dir "$out"
expect_error crc-convert-torch 3 "$crc_msg" convert --to torch "$WORK/crc" --target-file "$WORK/o-crc.pt"
# torch.save with CRCs disabled writes 0: nothing to check, nothing wrong.
expect_rc 0 "records without a CRC-32" convert "$HOSTILE/no_crc.pt" --target_dir "$WORK/o-nocrc" --quiet

# --- rank files renamed or swapped: refused, naming both names, unless asked --------------------
rm -rf "$WORK/swapped" && cp -r "$W4" "$WORK/swapped"
mv "$WORK/swapped/model_world_size_4_rank_1.pt" "$WORK/swapped/tmp"
mv "$WORK/swapped/model_world_size_4_rank_2.pt" "$WORK/swapped/model_world_size_4_rank_1.pt"
mv "$WORK/swapped/tmp" "$WORK/swapped/model_world_size_4_rank_2.pt"
expect_error swapped-ranks 3 "model_world_size_4_rank_1.pt was saved as model_world_size_4_rank_2.pt" \
  merge --local_dir "$WORK/swapped" --target_dir "$WORK/o-swapped"
expect_rc 0 "--accept-renamed-rank-files" merge --local_dir "$WORK/swapped" \
  --target_dir "$WORK/o-swapped" --accept-renamed-rank-files --quiet

# --- inspect reports every file it cannot read -------------------------------------------------
mkdir -p "$WORK/ins"
cp "$FIXTURES/sample/pytorch_model.bin" "$WORK/ins/good.bin"
cp "$FIXTURES/sample/config.json" "$WORK/ins/config.json"
: >"$WORK/ins/model_world_size_2_rank_0.pt"
printf 'x' >"$WORK/ins/model_world_size_2_rank_1.pt"
mkfifo "$WORK/ins/pipe.pt"
ln -s /dev/zero "$WORK/ins/zero.bin"
python3 - "$FIXTURES/sample/pytorch_model.bin" "$WORK/ins/corrupt.bin" <<'PY'
import struct, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read())
info = next(i for i in zipfile.ZipFile(src).infolist() if i.filename.endswith("data.pkl"))
name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
data[info.header_offset + 30 + name_len + extra_len + 2] = 0xFF  # an unknown opcode after PROTO
open(dst, "wb").write(bytes(data))
PY
run_ckpt "$WORK/ins.log" inspect "$WORK/ins"
problems=0
for f in model_world_size_2_rank_0.pt model_world_size_2_rank_1.pt pipe.pt zero.bin corrupt.bin; do
  grep -qF "$f" "$WORK/ins.log.err" || { fail "inspect DIR: $f not reported: $(cat "$WORK/ins.log.err")"; problems=1; }
done
if [ "$RC" = 3 ] && [ "$problems" = 0 ] && grep -q "good.bin (torch-zip)" "$WORK/ins.log" &&
   ! grep -q "config.json" "$WORK/ins.log.err"; then
  pass "inspect DIR: lists good.bin, reports the 5 unreadable files, exit 3"
else
  fail "inspect DIR: exit $RC: $(head -c 400 "$WORK/ins.log.err")"
fi
if [ "$(id -u)" = 0 ]; then
  # Permission denied needs a user who lacks the permission: root has them all.
  chmod 755 "$WORK" && mkdir -p "$WORK/locked" && cp "$FIXTURES/sample/pytorch_model.bin" "$WORK/locked/x.bin" &&
    chmod 000 "$WORK/locked/x.bin"
  as_nobody() {  # as_nobody LOG ARGS... : ckptstream ARGS as user nobody; exit code in RC
    local log=$1; shift
    set +e
    setpriv --reuid=65534 --regid=65534 --clear-groups "$CKPT" "$@" >/dev/null 2>"$log"
    RC=$?
    set -e
  }
  as_nobody "$WORK/locked.err" inspect "$WORK/locked"
  [ "$RC" = 4 ] && grep -q "x.bin: cannot open: Permission denied" "$WORK/locked.err" &&
    pass "inspect DIR: a mode-000 file is reported (exit 4)" ||
    fail "inspect of a mode-000 file as nobody: exit $RC: $(cat "$WORK/locked.err")"
  chmod 0311 "$WORK/locked"
  as_nobody "$WORK/unlistable.err" merge --local_dir "$WORK/locked" --target_dir /tmp/never
  [ "$RC" = 4 ] && grep -q "locked: cannot list: Permission denied" "$WORK/unlistable.err" &&
    pass "an unlistable --local_dir says permission denied (exit 4)" ||
    fail "unlistable directory: exit $RC: $(cat "$WORK/unlistable.err")"
  chmod 755 "$WORK/locked"
fi

# --- what safetensors cannot hold, and an empty torch output ------------------------------------
expect_error metadata-key 3 "'__metadata__': safetensors reserves this name" \
  convert "$HOSTILE/metadata_key.pt" --target_dir "$WORK/o-meta"
expect_error non-utf8-key 3 "the name is not valid UTF-8" convert "$HOSTILE/non_utf8_key.pt" --target_dir "$WORK/o-utf8"
expect_error convert-torch-no-tensors 3 "no tensor found" \
  convert --to torch "$HOSTILE/shared_dicts_empty.pt" --target-file "$WORK/o-empty.pt"
[ ! -e "$WORK/o-empty.pt" ] && pass "no empty .pt written" || fail "an empty .pt was written"
expect_error max-shard-size-0 2 "at least 1 byte" convert "$FIXTURES/sample" --target_dir "$WORK/o-0" --max-shard-size 0
run_ckpt "$WORK/json" inspect --json "$HOSTILE/non_utf8_key.pt"
python3 -c 'import json, sys; d = json.loads(open(sys.argv[1], "rb").read().decode("utf-8")); assert len(d["files"][0]["tensors"]) == 2' "$WORK/json" &&
  pass "inspect --json of a non-UTF-8 name is valid UTF-8 JSON" || fail "inspect --json: not valid JSON: $(head -c 200 "$WORK/json")"

finish
