#!/usr/bin/env bash
# Verdict → webhook received (issue 18): a 3-node cluster with --notify pointing at a loopback
# receiver, simulated workers that answer every job `failed`, and the receiver's latency from the
# event's at_ms (the leader's clock when the verdict was applied) to its arrival.
#
#   bench/notify-latency.sh [JOBS] [RATE]      (default 2000 jobs at 100/s)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-2000}
rate=${2:-100}
cargo build --release -q -p rehearse --bin rehearse -p rehearse-loadtest --bin rehearse-loadtest
dir=$(mktemp -d)
trap 'kill $receiver 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 bench/webhook-receiver.py "$port" >"$dir/receiver.out" &
receiver=$!
printf '[webhook.bench]\nurl = "http://127.0.0.1:%s/hook"\nsecret = "bench"\n' "$port" >"$dir/notify.toml"
target/release/rehearse-loadtest steady --jobs "$jobs" --workers 20 --rate "$rate" \
  --verdict failed --notify "$dir/notify.toml" --output json >"$dir/load.json"
# The cluster is gone when the loadtest returns: what was to be delivered has been, or never will.
kill -TERM "$receiver"; wait "$receiver" || true
grep -E '"lifecycles_per_sec"|"lost"|"duplicated"|"failed"' "$dir/load.json" | tr -d ' \n'; echo
cat "$dir/receiver.out"
