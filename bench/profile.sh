#!/usr/bin/env bash
# Benchmark for issue 16: the restore time of one pg_dump (pgbench scale 50, custom format)
# under `[sandbox] profile = "faithful"` against `"fast"`, as a ratio per round. Both verify the
# same dump with the same checks (row counts; `[builtin] integrity = false`, so the restore
# dominates) in the process runtime, alternating so drift hits both alike.
#
#   bench/profile.sh [ROUNDS]     (default 3; needs root and PostgreSQL)
#
# Prints one JSON object on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
scale=${SCALE:-50}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
user=nobody
group=$(id -gn "$user")
asuser() { setpriv --reuid="$user" --regid="$group" --clear-groups -- "$@"; }
cargo build --release -q -p rehearse
rehearse=$PWD/target/release/rehearse

base=/var/tmp/rehearse-bench-profile
mkdir -p "$base"; chmod 755 "$base"; chown "$user:$group" "$base"
dump=$base/pgbench-s$scale.dump
if [ ! -f "$dump" ]; then
  echo "bench: making pgbench scale $scale and its dump (once)" >&2
  src=$base/src; rm -rf "$src"; mkdir -p "$src"; chown "$user:$group" "$src"
  asuser "$bindir/initdb" -D "$src/data" -U postgres --auth=trust --no-sync >/dev/null
  asuser "$bindir/pg_ctl" -D "$src/data" -l "$src/log" -o "-c listen_addresses='' -c unix_socket_directories=$src -c fsync=off" -w start >/dev/null
  asuser "$bindir/createdb" -h "$src" -U postgres bench
  asuser "$bindir/pgbench" -h "$src" -U postgres -i -s "$scale" -q bench 2>/dev/null
  asuser "$bindir/pg_dump" -h "$src" -U postgres -Fc -f "$dump.tmp" bench
  asuser "$bindir/pg_ctl" -D "$src/data" -m fast stop >/dev/null
  rm -rf "$src"; mv "$dump.tmp" "$dump"
fi
plan() {
  cat > "$base/$1.toml" <<TOML
[artifact]
url = "$dump"
engine = "postgres"
[builtin]
integrity = false
[[checks]]
name = "accounts"
sql = "SELECT count(*) FROM pgbench_accounts"
expect = "= $((scale * 100000))"
[sandbox]
profile = "$1"
TOML
}
plan fast; plan faithful
restore_ms() {
  "$rehearse" verify --plan "$base/$1.toml" --output json --runtime process \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["verdict"]=="passed", r.get("failure"); print([p["ms"] for p in r["phases"] if p["name"]=="restore"][0], r["rto_ms"])'
}
restore_ms fast >/dev/null   # warm the template cache
fast=(); faithful=(); ratios=()
for i in $(seq "$rounds"); do
  read -r f frto < <(restore_ms fast)
  read -r d drto < <(restore_ms faithful)
  echo "bench: round $i: restore fast ${f} ms, faithful ${d} ms (RTO $frto / $drto ms)" >&2
  fast+=("$f"); faithful+=("$d"); ratios+=("$(echo "scale=3; $d / $f" | bc)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '{"scale": %s, "rounds": %s, "fast_restore_ms": [%s], "faithful_restore_ms": [%s], "ratio_faithful_over_fast_p50": %s}\n' \
  "$scale" "$rounds" "$(IFS=,; echo "${fast[*]}")" "$(IFS=,; echo "${faithful[*]}")" "$(median "${ratios[@]}")"
