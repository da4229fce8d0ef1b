# Shared by rss.sh and rss_merge.sh (sourced, not run): time and peak RSS of one command per
# label, against the first label measured (cp + sync). The caller sets `dir` (work directory,
# absolute), `bin` (the ckptstream binary) and `bytes` (input bytes, for GB/s) before measuring.

# The binary must exist; /usr/bin/time gives the peak RSS (installed when missing, as root).
rss_require_bin() {
  [ -x "$bin" ] || { echo "no ckptstream binary at $bin (build it, or pass --bin)" >&2; exit 2; }
  bin=$(realpath "$bin")
  [ -x /usr/bin/time ] || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q time </dev/null >/dev/null; }
}

cache=warm
drop_caches() {  # cold page cache for every run, when allowed
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; cache=cold; else cache=warm; fi
}
now() { date +%s.%N; }
results=()

# measure LABEL COMMAND... : wall time (including a final sync) and peak RSS of COMMAND.
measure() {
  local label=$1; shift
  drop_caches
  local t0 t1 log="$dir/${label//[^A-Za-z0-9]/_}.time"
  t0=$(now)
  /usr/bin/time -v -o "$log" "$@"
  sync
  t1=$(now)
  local wall rss
  wall=$(python3 -c "print($t1 - $t0)")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  results+=("$label|$wall|$rss")
  printf '%-34s wall %8.2f s   %7.3f GB/s   peak RSS %9.1f MiB   (%s cache)\n' "$label" "$wall" \
    "$(python3 -c "print($bytes / $wall / 1e9)")" "$(python3 -c "print($rss / 1024)")" "$cache"
}

# summary TITLE: every measurement against the first one's wall time.
summary() {
  echo
  echo "summary ($1)"
  local cp_wall=${results[0]#*|} r label wall rss
  cp_wall=${cp_wall%%|*}
  for r in "${results[@]}"; do
    IFS='|' read -r label wall rss <<<"$r"
    python3 -c "print(f'  {\"$label\":<32} {$wall:7.2f} s  {$wall / $cp_wall:5.2f}x cp+sync  peak RSS {$rss / 1024:8.1f} MiB')"
  done
}
