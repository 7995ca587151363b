#!/usr/bin/env bash
# usage: scripts/sink-outage.sh [RATE] [DOWN_SECONDS] (from the repository,
# after `cargo build --release`): a fresh server with the PostgreSQL sink
# (a database of its own at 127.0.0.1:5432, user postgres) takes
# simulated traffic at RATE events/s (default 10000) while the database
# refuses connections for DOWN_SECONDS (default 300); then the database
# comes back, the traffic goes on, and /v1/sinks is printed every 5 s:
# seconds, state, rows, behindBytes. The catch-up rate is the rows'
# growth while behindBytes falls.
set -euo pipefail
rate=${1:-10000}; down=${2:-300}; bin=${STOCKFLOW:-target/release/stockflow}
port=18091; db=stockflow_outage; dir=$(mktemp -d)
q() { psql -qAt -h 127.0.0.1 -U postgres -d postgres -c "$1"; }
q "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null; q "CREATE DATABASE $db"
$bin serve --data-dir "$dir/data" --listen 127.0.0.1:$port \
  --sink-postgres "postgres://postgres@127.0.0.1:5432/$db" > /tmp/sink-outage-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; q "ALTER DATABASE $db ALLOW_CONNECTIONS true"; rm -rf "$dir"' EXIT
until curl -s localhost:$port/v1/sinks | grep -q '"state":"connected"'; do sleep 0.2; done
q "ALTER DATABASE $db ALLOW_CONNECTIONS false"
q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db'" > /dev/null
$bin simulate --url http://127.0.0.1:$port --rate "$rate" --duration $((down + 180)) > /dev/null 2>&1 &
sim=$!
t0=$(date +%s)
sample() {
  curl -s localhost:$port/v1/sinks | python3 -c "import json,sys; k=json.load(sys.stdin)['sinks'][0]; print($(date +%s) - $t0, k['state'], k['rows'], k['behindBytes'])"
}
while [ $(( $(date +%s) - t0 )) -lt "$down" ]; do sample; sleep 5; done
q "ALTER DATABASE $db ALLOW_CONNECTIONS true"
echo "database back at $(( $(date +%s) - t0 )) s"
while kill -0 $sim 2>/dev/null; do sample; sleep 5; done
