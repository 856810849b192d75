#!/usr/bin/env bash
# Benchmark for issue 2: `rehearse verify` against the hand script (initdb + pg_ctl start +
# pg_restore + psql count + stop) on a pgbench database at scale 50, in one run; and the checksum
# phase's throughput against b3sum on the same file and on a 2 GiB file.
#
#   bench/verify-vs-hand.sh [ROUNDS]     (default 3; needs root, PostgreSQL, and b3sum in PATH)
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

base=/var/tmp/rehearse-bench
mkdir -p "$base"; chmod 755 "$base"
dump=$base/pgbench-s$scale.dump
if [ ! -s "$dump" ]; then
  echo "bench: making pgbench scale $scale and dumping it (once)" >&2
  src=$(mktemp -d "$base/src.XXXX"); chown "$user:$group" "$src"
  asuser "$bindir/initdb" -D "$src/data" -U postgres --auth=trust --no-sync >/dev/null
  asuser "$bindir/pg_ctl" -D "$src/data" -l "$src/log" -o "-c listen_addresses='' -c unix_socket_directories=$src -c fsync=off" -w start >/dev/null
  asuser "$bindir/createdb" -h "$src" -U postgres bench
  asuser "$bindir/pgbench" -h "$src" -U postgres -i -s "$scale" -q bench 2>/dev/null
  "$bindir/pg_dump" -h "$src" -U postgres -Fc -f "$dump.tmp" bench
  asuser "$bindir/pg_ctl" -D "$src/data" -m immediate stop >/dev/null
  rm -rf "$src"; mv "$dump.tmp" "$dump"
fi
rows=$((scale * 100000))

now() { date +%s.%N; }

hand() {
  local d; d=$(mktemp -d "$base/hand.XXXX"); chown "$user:$group" "$d"
  asuser "$bindir/initdb" -D "$d/data" -U postgres --auth=trust >/dev/null
  asuser "$bindir/pg_ctl" -D "$d/data" -l "$d/log" -o "-c listen_addresses='' -c unix_socket_directories=$d" -w start >/dev/null
  asuser "$bindir/createdb" -h "$d" -U postgres restored
  "$bindir/pg_restore" -h "$d" -U postgres -d restored "$dump"
  local n; n=$("$bindir/psql" -X -A -t -h "$d" -U postgres -d restored -c 'SELECT count(*) FROM pgbench_accounts')
  [ "$n" = "$rows" ] || { echo "hand script restored $n rows, expected $rows" >&2; exit 1; }
  asuser "$bindir/pg_ctl" -D "$d/data" -m fast stop >/dev/null
  rm -rf "$d"
}

work=$(mktemp -d "$base/work.XXXX"); chmod 755 "$work"
verify() {
  "$rehearse" verify "$dump" --check 'SELECT count(*) FROM pgbench_accounts' --expect "= $rows" \
    --output json --work-dir "$work" --cache-dir "$base/cache" > "$base/report.json"
}

verify # warm the template cache and the page cache; not timed
hand_s=(); verify_s=(); checksum_ms=(); restore_ms=(); checks_ms=(); provision_ms=()
for i in $(seq "$rounds"); do
  echo "bench: round $i/$rounds" >&2
  t0=$(now); hand; t1=$(now); verify; t2=$(now)
  hand_s+=("$(echo "$t1 - $t0" | bc)"); verify_s+=("$(echo "$t2 - $t1" | bc)")
  checksum_ms+=("$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(p["ms"] for p in r["phases"] if p["name"]=="checksum"))' "$base/report.json")")
  for ph in provision restore checks; do
    v=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(p["ms"] for p in r["phases"] if p["name"]==sys.argv[2]))' "$base/report.json" "$ph")
    eval "${ph}_ms+=(\"$v\")"
  done
done
bytes=$(stat -c %s "$dump")

# checksum throughput: b3sum vs the checksum phase, on the dump and on a 2 GiB file (page cache warm)
big=$base/random-2g.bin
[ -s "$big" ] || head -c 2147483648 /dev/urandom > "$big"
b3() { local f=$1 best=999; for _ in 1 2 3; do s=$(now); b3sum --no-names "$f" >/dev/null; e=$(now); t=$(echo "$e - $s" | bc); best=$(echo "if ($t < $best) $t else $best" | bc); done; echo "$best"; }
phase() { local f=$1 best=999999; for _ in 1 2 3; do "$rehearse" verify "$f" --output json --work-dir "$work" --cache-dir "$base/cache" > "$base/phase.json" || true
  ms=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(p["ms"] for p in r["phases"] if p["name"]=="checksum"))' "$base/phase.json"); [ "$ms" -lt "$best" ] && best=$ms; done; echo "$best"; }
b3_dump=$(b3 "$dump"); ph_dump=$(phase "$dump")
b3_big=$(b3 "$big"); ph_big=$(phase "$big")
rmdir "$work" 2>/dev/null || true

python3 - "$rounds" "$bytes" "$b3_dump" "$ph_dump" "$b3_big" "$ph_big" "${hand_s[*]}" "${verify_s[*]}" "${provision_ms[*]}" "${restore_ms[*]}" "${checks_ms[*]}" <<'PY'
import json, statistics as st, sys
rounds, size, b3d, phd, b3b, phb = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
hand = [float(x) for x in sys.argv[7].split()]; ver = [float(x) for x in sys.argv[8].split()]
prov, rest, chk = ([int(x) for x in a.split()] for a in sys.argv[9:12])
mb = lambda b, s: b / s / 1e6
print(json.dumps({
  "rounds": rounds, "dump_bytes": size,
  "hand_s": hand, "verify_s": ver,
  "hand_median_s": st.median(hand), "verify_median_s": st.median(ver),
  "ratio_verify_over_hand": round(st.median(ver) / st.median(hand), 3),
  "verify_phase_median_ms": {"provision": st.median(prov), "restore": st.median(rest), "checks": st.median(chk)},
  "checksum_dump": {"b3sum_s": b3d, "phase_ms": phd, "b3sum_MBps": round(mb(size, b3d)), "phase_MBps": round(mb(size, max(phd, 1) / 1000)), "ratio": round(b3d * 1000 / max(phd, 1), 3)},
  "checksum_2GiB": {"b3sum_s": b3b, "phase_ms": phb, "b3sum_MBps": round(mb(2**31, b3b)), "phase_MBps": round(mb(2**31, max(phb, 1) / 1000)), "ratio": round(b3b * 1000 / max(phb, 1), 3)},
}, indent=2))
PY
