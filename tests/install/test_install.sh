#!/usr/bin/env bash
# The installed library and package: `cmake --install` of the build, a program outside the
# project that finds it with find_package(ckptstream) and merges a fixture through the public API
# (the same bytes as the tool writes), and `cpack -G DEB`: the .deb holds the tool, the library,
# the headers and the package config, and depends on the Debian packages of what the tool links.
#   test_install.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=$1 src=$2
WORK=$(mktemp -d /tmp/ckptstream-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failures=0
pass() { echo "ok   [install]: $1"; }
fail() { echo "FAIL [install]: $1"; failures=$((failures + 1)); }
fixture="$src/tests/fixtures/fsdp/w2"

if cmake --install "$build" --prefix "$WORK/prefix" >"$WORK/install.log" 2>&1; then
  pass "cmake --install"
else
  fail "cmake --install: $(tail -5 "$WORK/install.log")"
fi
for f in bin/ckptstream include/ckptstream/ckptstream.h include/ckptstream/result.h \
         lib/cmake/ckptstream/ckptstreamConfig.cmake lib/cmake/ckptstream/ckptstreamTargets.cmake; do
  [ -e "$WORK/prefix/$f" ] && pass "installed $f" || fail "not installed: $f"
done
# Only the public headers are installed.
extra=$(find "$WORK/prefix/include" -type f ! -path '*/include/ckptstream/*' | head -3)
[ -z "$extra" ] && pass "only include/ckptstream/ is installed" || fail "other headers installed: $extra"

if cmake -S "$src/tests/install/consumer" -B "$WORK/consumer" -DCMAKE_PREFIX_PATH="$WORK/prefix" \
     >"$WORK/consumer.log" 2>&1 && cmake --build "$WORK/consumer" -j2 >>"$WORK/consumer.log" 2>&1; then
  pass "a consumer project builds with find_package(ckptstream)"
else
  fail "consumer build: $(tail -15 "$WORK/consumer.log")"
fi
if "$WORK/consumer/consumer" "$fixture" "$WORK/by-api" >"$WORK/api.out" 2>&1 &&
   grep -q "found: verl FSDP checkpoint, world size 2" "$WORK/api.out" &&
   grep -q "^verified: " "$WORK/api.out"; then
  pass "the consumer plans, writes and verifies through the API"
else
  fail "consumer run: $(cat "$WORK/api.out")"
fi
"$WORK/prefix/bin/ckptstream" merge --local_dir "$fixture" --target_dir "$WORK/by-tool" -q \
  --dist none >/dev/null 2>&1
if diff -r "$WORK/by-api" "$WORK/by-tool" >/dev/null 2>&1; then
  pass "the API and the installed tool write the same files"
else
  fail "API output differs from the tool's: $(diff -rq "$WORK/by-api" "$WORK/by-tool" | head -3)"
fi

if (cd "$WORK" && cpack --config "$build/CPackConfig.cmake" -B "$WORK/pkg" >"$WORK/cpack.log" 2>&1); then
  pass "cpack -G DEB"
else
  fail "cpack: $(tail -10 "$WORK/cpack.log")"
fi
deb=$(ls "$WORK"/pkg/*.deb 2>/dev/null | head -1)
if [ -n "$deb" ]; then
  depends=$(dpkg-deb -f "$deb" Depends)
  for lib in libboost-iostreams libsimdjson libzstd libxxhash libdeflate; do
    [[ "$depends" == *"$lib"* ]] && pass ".deb depends on $lib" || fail ".deb Depends lacks $lib: $depends"
  done
  contents=$(dpkg-deb -c "$deb")
  for f in ./usr/bin/ckptstream ./usr/include/ckptstream/ckptstream.h ./usr/lib/cmake/ckptstream/ckptstreamConfig.cmake; do
    grep -q " $f\$" <<<"$contents" && pass ".deb holds $f" || fail ".deb lacks $f"
  done
  dpkg-deb -x "$deb" "$WORK/root"
  if "$WORK/root/usr/bin/ckptstream" merge --local_dir "$fixture" --target_dir "$WORK/by-deb" -q \
       --dist none >/dev/null 2>&1 && diff -r "$WORK/by-deb" "$WORK/by-tool" >/dev/null; then
    pass "the packaged tool merges the fixture to the same files"
  else
    fail "the packaged tool's merge differs or failed"
  fi
else
  fail "no .deb was made"
fi
[ "$failures" = 0 ] || { echo "test_install: $failures failure(s)"; exit 1; }
