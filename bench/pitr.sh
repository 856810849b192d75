#!/usr/bin/env bash
# Benchmark for issue 15: point-in-time recovery of a pgbench scale-50 base backup (pg_basebackup
# -Ft -X none) plus at least 64 archived WAL segments.
#
# - `rehearse verify BASE --wal-archive ARCHIVE` against the hand procedure (untar, write
#   recovery.signal + restore_command, start with pg_ctl -w, poll pg_is_in_recovery() until
#   recovery has ended — pg_ctl alone returns as soon as a hot standby takes read-only
#   connections, long before the archive is replayed — then read what the last segments wrote,
#   stop), as a ratio per round. rehearse runs twice: like for like
#   (`[builtin] integrity = false`, no pg_amcheck) and with its defaults (pg_amcheck on every
#   table). Both rehearse runs also check the backup against its manifest (pg_verifybackup),
#   hash every segment, count every table's rows.
# - `--promote`: the time from pg_promote to the first committed write (canary_ms), p50 of 5.
#
#   bench/pitr.sh [ROUNDS]     (default 3; needs root and PostgreSQL)
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

base=/var/tmp/rehearse-bench-pitr
mkdir -p "$base"; chmod 755 "$base"; chown "$user:$group" "$base"
backup=$base/base-s$scale
archive=$base/archive-s$scale
if [ ! -f "$backup/done" ]; then
  echo "bench: making pgbench scale $scale, its base backup and 64+ archived segments (once)" >&2
  rm -rf "$backup" "$archive" "$base/src"
  mkdir -p "$archive" "$base/src"; chown "$user:$group" "$archive" "$base/src"
  src=$base/src
  asuser "$bindir/initdb" -D "$src/data" -U postgres --auth=trust --no-sync >/dev/null
  asuser "$bindir/pg_ctl" -D "$src/data" -l "$src/log" -o "-c listen_addresses='' -c unix_socket_directories=$src -c fsync=off -c wal_level=replica -c archive_mode=on -c max_wal_senders=4 -c max_wal_size=4GB -c archive_command='cp %p $archive/%f'" -w start >/dev/null
  asuser "$bindir/createdb" -h "$src" -U postgres bench
  asuser "$bindir/pgbench" -h "$src" -U postgres -i -s "$scale" -q bench 2>/dev/null
  asuser "$bindir/pg_basebackup" -h "$src" -U postgres -D "$backup.tmp" -Ft -X none -c fast
  # After the backup: enough changes for 64+ segments, then a switch so the last is archived.
  start=$(ls "$archive" | grep -E '^[0-9A-F]{24}$' | wc -l)
  while [ $(( $(ls "$archive" | grep -E '^[0-9A-F]{24}$' | wc -l) - start )) -lt 64 ]; do
    asuser "$bindir/psql" -X -q -h "$src" -U postgres -d bench -c 'UPDATE pgbench_accounts SET abalance = abalance + 1' >/dev/null
    asuser "$bindir/psql" -X -q -h "$src" -U postgres -d bench -c 'SELECT pg_switch_wal()' >/dev/null
    sleep 2
  done
  asuser "$bindir/pg_ctl" -D "$src/data" -m fast stop >/dev/null
  rm -rf "$src"; mv "$backup.tmp" "$backup"; touch "$backup/done"
fi
rows=$((scale * 100000))
segments=$(ls "$archive" | grep -cE '^[0-9A-F]{24}$')

now() { date +%s.%N; }

hand() {
  local d; d=$(mktemp -d "$base/hand.XXXX"); chown "$user:$group" "$d"
  mkdir "$d/data"; tar -xf "$backup/base.tar" -C "$d/data"; chown -R "$user:$group" "$d/data"; chmod 700 "$d/data"
  touch "$d/data/recovery.signal"
  asuser "$bindir/pg_ctl" -D "$d/data" -l "$d/log" -t 3600 -o "-c listen_addresses='' -c unix_socket_directories=$d -c archive_mode=off -c restore_command='cp $archive/%f %p'" -w start >/dev/null
  until [ "$("$bindir/psql" -X -A -t -h "$d" -U postgres -d bench -c 'SELECT pg_is_in_recovery()')" = f ]; do sleep 0.05; done
  # Every UPDATE after the backup added 1 to every balance: the replay is whole when min = their count.
  balance=$("$bindir/psql" -X -A -t -h "$d" -U postgres -d bench -c 'SELECT min(abalance) FROM pgbench_accounts')
  asuser "$bindir/pg_ctl" -D "$d/data" -m immediate stop >/dev/null
  rm -rf "$d"
}

work=$(mktemp -d "$base/work.XXXX"); chmod 755 "$work"
plan() {
  cat > "$base/plan-$1.toml" <<EOF
[artifact]
url = "$backup"
engine = "postgres"
[pitr]
wal_archive = "$archive"
[builtin]
integrity = $2
[[checks]]
name = "accounts"
sql = "SELECT count(*) FROM pgbench_accounts"
expect = "= $rows"
[[checks]]
name = "every update after the backup replayed"
sql = "SELECT min(abalance) FROM pgbench_accounts"
expect = "= $balance"
$3
EOF
}
hand # warm the page cache; not timed; its balance is what rehearse must find too
echo "bench: $segments segments archived; after a whole replay min(abalance) = $balance" >&2
plan fair false ""
plan full true ""
plan promote false "[promote]"
verify() {
  "$rehearse" verify --plan "$base/plan-$1.toml" --runtime process --output json \
    --work-dir "$work" --cache-dir "$base/cache" > "$base/report-$1.json"
  [ "$(jq -r .verdict "$base/report-$1.json")" = passed ] || { jq .failure "$base/report-$1.json" >&2; exit 1; }
}

verify fair # warm the page cache; not timed
hand_s=(); fair_s=(); full_s=(); restore_ms=()
for i in $(seq "$rounds"); do
  echo "bench: round $i/$rounds" >&2
  expected=$balance
  t0=$(now); hand; t1=$(now); verify fair; t2=$(now); verify full; t3=$(now)
  [ "$balance" = "$expected" ] || { echo "the hand procedure found min(abalance) $balance, then $expected" >&2; exit 1; }
  hand_s+=("$(echo "$t1 - $t0" | bc)"); fair_s+=("$(echo "$t2 - $t1" | bc)"); full_s+=("$(echo "$t3 - $t2" | bc)")
  restore_ms+=("$(jq '.phases[] | select(.name == "restore") | .ms' "$base/report-fair.json")")
done
canary_ms=(); promoted_ms=()
for i in 1 2 3 4 5; do
  echo "bench: promote $i/5" >&2
  verify promote
  canary_ms+=("$(jq .recovery.promotion.canary_ms "$base/report-promote.json")")
  promoted_ms+=("$(jq .recovery.promotion.promoted_ms "$base/report-promote.json")")
done
replayed=$(jq .recovery.segments_replayed "$base/report-fair.json")
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
rm -rf "$work"
jq -n \
  --arg commit "$(git rev-parse --short HEAD)" --argjson scale "$scale" --argjson segments "$segments" \
  --argjson replayed "$replayed" \
  --argjson hand "$(median "${hand_s[@]}")" --argjson fair "$(median "${fair_s[@]}")" \
  --argjson full "$(median "${full_s[@]}")" --argjson restore_ms "$(median "${restore_ms[@]}")" \
  --argjson canary "$(median "${canary_ms[@]}")" --argjson promoted "$(median "${promoted_ms[@]}")" \
  '{commit: $commit, scale: $scale, archive_segments: $segments, segments_replayed: $replayed,
    hand_s: $hand, rehearse_no_amcheck_s: $fair, rehearse_default_s: $full,
    ratio_no_amcheck: ($fair / $hand), ratio_default: ($full / $hand), restore_phase_ms: $restore_ms,
    promote_p50_ms: $promoted, canary_p50_ms: $canary}'
