#!/usr/bin/env bash
# Samples the resident set of every `rehearse coordinator` process while a command runs, to show
# whether memory stays flat over a long load (issue 14: a million job lifecycles with a short
# --job-retention). Prints one line per sample: seconds since start, then each coordinator's
# VmRSS in MiB; the command's own output goes to the file named by OUT (default /tmp/rss-run.out).
#
#   bench/rss-over-time.sh 15 target/release/rehearse-loadtest steady --jobs 1000000 \
#       --workers 200 --job-retention 10s --patience 120s --output json
set -euo pipefail
every=${1:?usage: rss-over-time.sh SECONDS COMMAND...}
shift
out=${OUT:-/tmp/rss-run.out}
"$@" >"$out" 2>&1 &
run=$!
start=$(date +%s)
while kill -0 "$run" 2>/dev/null; do
  sleep "$every"
  line="$(( $(date +%s) - start ))s"
  for pid in $(pgrep -f 'rehearse coordinator' || true); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    line="$line $(( kb / 1024 ))"
  done
  echo "$line"
done
wait "$run"
