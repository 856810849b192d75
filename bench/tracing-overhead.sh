#!/usr/bin/env bash
# Tracing's cost on the coordinator: rehearse-loadtest steady with and without OTLP export, runs
# interleaved. The coordinators the loadtest starts inherit OTEL_EXPORTER_OTLP_ENDPOINT, which
# points at cli/tests/support/otlp_collector.py (counting spans only).
# Usage: bench/tracing-overhead.sh [RUNS] [loadtest flags…]
# Build first: cargo build --release -p rehearse -p rehearse-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--jobs 20000 --workers 500)
out=$(mktemp -d)
trap 'kill "$collector" 2>/dev/null || true; rm -rf "$out"' EXIT
python3 cli/tests/support/otlp_collector.py --count-only >"$out/collector" &
collector=$!
for _ in $(seq 50); do grep -q listening "$out/collector" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/listening/ {print $2}' "$out/collector")
rate() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["lifecycles_per_sec"]))'; }
for i in $(seq "$runs"); do
  off=$(env -u OTEL_EXPORTER_OTLP_ENDPOINT target/release/rehearse-loadtest steady "${flags[@]}" --output json | rate)
  on=$(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" target/release/rehearse-loadtest steady "${flags[@]}" --output json | rate)
  echo "run $i: off $off/s, on $on/s"
done
kill -TERM "$collector"; wait "$collector" 2>/dev/null || true
grep spans "$out/collector"
