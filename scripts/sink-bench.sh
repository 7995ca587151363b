#!/usr/bin/env bash
# usage: scripts/sink-bench.sh off|on|lake|both|catchup FILE (from the
# repository, after `cargo build --release`): imports FILE (canonical
# NDJSON) into a fresh server without sinks (off), with the PostgreSQL
# sink (on: a database of its own at 127.0.0.1:5432, user postgres), with
# the Parquet lake (lake: flushed every second), or with both, and reports
# the ingest rate and when the sinks caught up. catchup imports without
# the sink, then restarts the server with it and reports how fast it
# copies what is there (the catch-up after a long database outage).
# STOCKFLOW_SINK_POSTGRES_CONNECTIONS sets the sink's connections.
set -euo pipefail
mode=$1; file=$2; bin=${STOCKFLOW:-target/release/stockflow}; port=18090
db=stockflow_sinkbench
dir=$(mktemp -d)
args=()
if [ "$mode" = on ] || [ "$mode" = both ] || [ "$mode" = catchup ]; then
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  args+=(--sink-postgres "postgres://postgres@127.0.0.1:5432/$db")
fi
if [ "$mode" = lake ] || [ "$mode" = both ]; then
  args+=(--lake "$dir/lake" --lake-flush-seconds 1)
fi
start() {
  $bin serve --data-dir "$dir/data" --listen 127.0.0.1:$port "$@" > /tmp/sinkbench-server.log 2>&1 &
  pid=$!
  until curl -sf localhost:$port/healthz >/dev/null; do sleep 0.1; done
}
if [ "$mode" = catchup ]; then start; else start "${args[@]}"; fi
events=$(wc -l < "$file")
t0=$(date +%s.%N)
$bin import "$file" --format canonical --url http://127.0.0.1:$port > /dev/null 2>&1
t1=$(date +%s.%N)
echo "$mode ingest: $(python3 -c "print(round($events/($t1-$t0)))") events/s"
if [ "$mode" = catchup ]; then
  kill $pid; wait $pid 2>/dev/null || true
  start "${args[@]}"
  t0=$(date +%s.%N); t1=$t0
  until curl -s localhost:$port/v1/sinks | grep -q '"state":"connected"'; do sleep 0.1; done
fi
if [ "$mode" != off ]; then
  # Caught up: nothing behind at two looks 0.5 s apart (a sink shows
  # how far behind it is as of its last look at the history files).
  zero=0
  while [ $zero -lt 2 ]; do
    s=$(curl -s localhost:$port/v1/sinks)
    behind=$(python3 -c "import json,sys; print(sum(k['behindBytes'] for k in json.loads(sys.argv[1])['sinks']))" "$s")
    if [ "$behind" = 0 ]; then zero=$((zero + 1)); else zero=0; fi
    sleep 0.5
  done
  t2=$(date +%s.%N)
  python3 - "$s" "$t0" "$t1" "$t2" <<'EOF'
import json, sys
sinks, t0, t1, t2 = json.loads(sys.argv[1])["sinks"], *map(float, sys.argv[2:])
for k in sinks:
    print(f"{k['kind']}: {k['rows']} rows, caught up {t2 - t1:.1f} s after ingest; "
          f"{k['rows'] / (t2 - t0):.0f} rows/s from the first event")
EOF
fi
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$dir"
