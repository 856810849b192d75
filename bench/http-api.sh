#!/usr/bin/env bash
# Benchmark for issue 17: GET /v1/jobs/{id} on the leader under load, with wrk (Debian's).
#
#   bench/http-api.sh [SECONDS] [CONNECTIONS]    (default 20 s, 4 connections; needs wrk)
#
# Starts three coordinators on loopback with the HTTP API, submits one job (no worker: it stays
# pending, which is what a CI long-poll reads while it waits), finds the leader, and runs wrk
# against the leader's GET /v1/jobs/{id}: every request is a linearizable read (raft ReadIndex).
# Prints wrk's report (throughput, latency percentiles).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-4}
command -v wrk >/dev/null || { echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 2; }
rehearse=${REHEARSE:-}
if [ -z "$rehearse" ]; then
  cargo build --release -q -p rehearse
  rehearse=$PWD/target/release/rehearse
fi
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A grpc http
for id in 1 2 3; do grpc[$id]=127.0.0.1:$(port); http[$id]=127.0.0.1:$(port); done
peers="1=${grpc[1]},2=${grpc[2]},3=${grpc[3]}"
for id in 1 2 3; do
  "$rehearse" coordinator --id "$id" --listen "${grpc[$id]}" --peers "$peers" \
    --data-dir "$dir/n$id" --http-listen "${http[$id]}" >"$dir/n$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  curl -sf "http://${http[1]}/readyz" >/dev/null 2>&1 && break; sleep 0.1
done
cat >"$dir/plan.toml" <<'PLAN'
[artifact]
url = "/nonexistent/bench.dump"
engine = "postgres"
PLAN
job=$(curl -sfL -X POST "http://${http[1]}/v1/verifications" -H 'Content-Type: application/toml' \
  --data-binary @"$dir/plan.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
leader=$(curl -sf "http://${http[1]}/v1/cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
echo "bench: leader $leader, job $job, $conns connections, ${secs}s" >&2
wrk -t "$(( conns < 2 ? 1 : 2 ))" -c "$conns" -d "${secs}s" --latency "http://${http[$leader]}/v1/jobs/$job"
