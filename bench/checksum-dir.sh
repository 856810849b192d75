#!/usr/bin/env bash
# Benchmark for issue 13: the checksum phase of a pg_dump directory of many small files against
# `b3sum DIR/*` on the same files.
#
#   bench/checksum-dir.sh [TABLES] [ROUNDS]   (default 52 tables, 5 rounds; root, PostgreSQL, b3sum)
#
# Makes a database of TABLES small tables (100 rows each), dumps it with the real
# `pg_dump -Fd` (one file per table plus toc.dat), then takes the best of ROUNDS of each: b3sum
# over the files, and the `checksum` phase from `rehearse verify DIR --output json`.
set -euo pipefail
cd "$(dirname "$0")/.."
tables=${1:-52}
rounds=${2:-5}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
user=nobody
group=$(id -gn "$user")
asuser() { setpriv --reuid="$user" --regid="$group" --clear-groups -- "$@"; }
rehearse=${REHEARSE:-}
if [ -z "$rehearse" ]; then
  cargo build --release -q -p rehearse
  rehearse=$PWD/target/release/rehearse
fi
base=/var/tmp/rehearse-bench
mkdir -p "$base"; chmod 755 "$base"
dir=$base/small-tables-$tables.dir
if [ ! -s "$dir/toc.dat" ]; then
  echo "bench: making $tables tables and dumping them (once)" >&2
  src=$(mktemp -d "$base/src.XXXX"); chown "$user:$group" "$src"
  asuser "$bindir/initdb" -D "$src/data" -U postgres --auth=trust --no-sync >/dev/null
  asuser "$bindir/pg_ctl" -D "$src/data" -l "$src/log" -o "-c listen_addresses='' -c unix_socket_directories=$src -c fsync=off" -w start >/dev/null
  asuser "$bindir/createdb" -h "$src" -U postgres small
  for i in $(seq 1 "$tables"); do
    echo "CREATE TABLE t$i AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100) g;"
  done | asuser "$bindir/psql" -q -h "$src" -U postgres -d small >/dev/null
  rm -rf "$dir.tmp"
  "$bindir/pg_dump" -h "$src" -U postgres -Fd -f "$dir.tmp" small
  asuser "$bindir/pg_ctl" -D "$src/data" -m immediate stop >/dev/null
  rm -rf "$src"; mv "$dir.tmp" "$dir"
fi
files=$(ls "$dir" | wc -l)
bytes=$(du -sb "$dir" | cut -f1)
best_b3=999999
best_rh=999999
for _ in $(seq 1 "$rounds"); do
  s=$(date +%s%N); b3sum "$dir"/* >/dev/null; e=$(date +%s%N)
  ms=$(( (e - s) / 1000000 )); [ "$ms" -lt "$best_b3" ] && best_b3=$ms
  ms=$("$rehearse" verify "$dir" --runtime process --output json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(next(p["ms"] for p in r["phases"] if p["name"]=="checksum"))')
  [ "$ms" -lt "$best_rh" ] && best_rh=$ms
done
echo "{\"files\": $files, \"bytes\": $bytes, \"b3sum_ms\": $best_b3, \"checksum_phase_ms\": $best_rh}"
