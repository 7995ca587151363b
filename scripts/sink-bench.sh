#!/usr/bin/env bash
# usage: scripts/sink-bench.sh on|off FILE (from the repository, after
# `cargo build --release`): imports FILE (canonical NDJSON) into a fresh
# server, with or without the PostgreSQL sink (a database of its own at
# 127.0.0.1:5432, user postgres), and reports the ingest rate and, with
# the sink, when its tables caught up.
set -euo pipefail
mode=$1; file=$2; bin=${STOCKFLOW:-target/release/stockflow}; port=18090
db=stockflow_sinkbench
dir=$(mktemp -d)
args=()
if [ "$mode" = on ]; then
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  args=(--sink-postgres "postgres://postgres@127.0.0.1:5432/$db")
fi
$bin serve --data-dir "$dir" --listen 127.0.0.1:$port "${args[@]}" > /tmp/sinkbench-server.log 2>&1 &
pid=$!
until curl -sf localhost:$port/healthz >/dev/null; do sleep 0.1; done
events=$(wc -l < "$file")
t0=$(date +%s.%N)
$bin import "$file" --format canonical --url http://127.0.0.1:$port > /dev/null 2>&1
t1=$(date +%s.%N)
echo "$mode ingest: $(python3 -c "print(round($events/($t1-$t0)))") events/s"
if [ "$mode" = on ]; then
  while :; do
    s=$(curl -s localhost:$port/v1/sinks)
    behind=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['sinks'][0]['behindBytes'])" "$s")
    [ "$behind" = 0 ] && break
    sleep 0.2
  done
  t2=$(date +%s.%N)
  rows=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['sinks'][0]['rows'])" "$s")
  echo "on sink: $rows rows, caught up $(python3 -c "print(round($t2-$t1,1))") s after ingest; $(python3 -c "print(round($rows/($t2-$t0)))") rows/s from the first event"
fi
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$dir"
