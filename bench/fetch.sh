#!/usr/bin/env bash
# Issue 6: fetch + checksum throughput and peak memory, S3 (moto's server on loopback) and
# file://, against b3sum, against the server's own ceiling (curl to /dev/null), and against the
# same work done with standard tools (curl | tee spill | b3sum).
#
#   bench/fetch.sh [SIZES_GB...]        default: 1 4
#
# Needs: target/release/rehearse (cargo build --release -p rehearse), b3sum (cargo install
# b3sum), python3 with moto[server] and boto3 (scripts/setup), curl, /usr/bin/time.
# The artifact is random bytes: the verification downloads and hashes all of it, then fails in
# `restore` ("not a PostgreSQL dump") at once, so the phases measured are fetch and checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1 4)
bin=target/release/rehearse
work=$(mktemp -d /tmp/rh-fetch-XXXXXX); chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
until curl -s "http://127.0.0.1:$port" >/dev/null; do sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
       AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='bench')"

secs() { python3 -c "import sys; print(f'{float(sys.argv[1]):.2f}')" "$1"; }
phase_ms() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(p["ms"] for p in r["phases"] if p["name"] in ("fetch","checksum")))' "$1"; }
maxrss_mb() { awk -F: '/Maximum resident/ {printf "%.0f", $2/1024}' "$1"; }

printf '%-6s %-22s %10s %10s %12s\n' size what seconds MB/s "peak RSS MB"
for gb in "${sizes[@]}"; do
  f="$work/art-$gb.bin"
  head -c "$((gb * 1024 * 1024 * 1024))" /dev/urandom > "$f"
  bytes=$(stat -c %s "$f")
  python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').upload_file('$f', 'bench', 'art-$gb.bin')"
  cat "$f" > /dev/null   # page cache warm for the local runs
  row() { printf '%-6s %-22s %10s %10.0f %12s\n' "${gb}GB" "$1" "$(secs "$2")" "$(python3 -c "print($bytes/1048576/$2)")" "$3"; }
  for round in 1 2 3; do
    s=$( { /usr/bin/time -f %e b3sum --no-names "$f" >/dev/null; } 2>&1 ); row "b3sum (local file)" "$s" "-"
    s=$( { /usr/bin/time -f %e curl -s -o /dev/null "$AWS_ENDPOINT_URL/bench/art-$gb.bin"; } 2>&1 ); row "curl S3 -> /dev/null" "$s" "-"
    # The same work with standard tools: download, keep a copy, hash it.
    s=$( { /usr/bin/time -f %e sh -c "curl -s '$AWS_ENDPOINT_URL/bench/art-$gb.bin' | tee '$work/spill' | b3sum --no-names >/dev/null"; } 2>&1 ); rm -f "$work/spill"; row "curl|tee spill|b3sum" "$s" "-"
    /usr/bin/time -v -o "$work/t" "$bin" verify --runtime process --work-dir "$work" --output json "s3://bench/art-$gb.bin" > "$work/r.json" || true
    row "rehearse s3:// f+c" "$(python3 -c "print($(phase_ms "$work/r.json")/1000)")" "$(maxrss_mb "$work/t")"
    /usr/bin/time -v -o "$work/t" "$bin" verify --runtime process --work-dir "$work" --output json "$f" > "$work/r.json" || true
    row "rehearse file:// f+c" "$(python3 -c "print($(phase_ms "$work/r.json")/1000)")" "$(maxrss_mb "$work/t")"
  done
  rm -f "$f"
done
