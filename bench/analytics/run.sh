#!/usr/bin/env bash
# Analytics at scale: seeds N requests (default 1,000,000 over 30 days) into a
# fresh data directory through the ordinary request-log writer, starts a
# release build of Tollgate on a free loopback port, and times the summary
# over every row, the day-by-day graph over 30 days and queries over an
# unbounded range (each query 3 times).
#
#   bash bench/analytics/run.sh [ROWS] [DAYS]
set -euo pipefail
ROWS=${1:-1000000}
DAYS=${2:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -p tollgate-server >&2
BIN=$ROOT/target/release/tollgate
DIR=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
export TOLLGATE_MASTER_KEY=$(printf '22%.0s' $(seq 32))
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
PID=

echo "seeding $ROWS rows over $DAYS days into $DIR" >&2
/usr/bin/time -f "seed: %e s wall, %M KiB max RSS" "$BIN" seed-usage --data-dir "$DIR" --rows "$ROWS" --days "$DAYS"
KEY=$("$BIN" admin-key create --data-dir "$DIR" 2>/dev/null)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --data-dir "$DIR" --listen "127.0.0.1:$PORT" 2>"$DIR/serve.log" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

MIN=$(date -u -d "-$((DAYS + 1)) days" +%Y-%m-%dT%H:%M:%SZ)
MAX=$(date -u +%Y-%m-%dT%H:%M:%SZ)
q() {
  local name=$1 path=$2
  for i in 1 2 3; do
    curl -s -o "$DIR/out.json" -w "$name run $i: %{time_total} s, HTTP %{http_code}, %{size_download} bytes\n" \
      -H "x-portkey-api-key: $KEY" "http://127.0.0.1:$PORT$path"
  done
}
q "summary (all rows)" "/v1/analytics/summary?time_of_generation_min=$MIN&time_of_generation_max=$MAX"
python3 -c "import json,sys; d=json.load(open('$DIR/out.json'))['data']; print('  requests', d['requests'], 'cost', d['cost'], 'p99', d['latency_p99_ms'], 'peak rpm', d['peak_requests_per_minute'])"
q "graph requests by day (30 days)" "/v1/analytics/graphs/requests?interval=day&time_of_generation_min=$MIN&time_of_generation_max=$MAX"
q "graph latency by day (30 days)" "/v1/analytics/graphs/latency?interval=day&time_of_generation_min=$MIN&time_of_generation_max=$MAX"
q "group by model (30 days)" "/v1/analytics/groups/ai-models?time_of_generation_min=$MIN&time_of_generation_max=$MAX"
q "graph cost by hour (last 7 days)" "/v1/analytics/graphs/cost?interval=hour&time_of_generation_min=$(date -u -d '-7 days' +%Y-%m-%dT%H:%M:%SZ)&time_of_generation_max=$MAX"
q "summary with metadata filter (raw rows)" "/v1/analytics/summary?time_of_generation_min=$MIN&time_of_generation_max=$MAX&metadata=%7B%22env%22%3A%22prod%22%7D"
FAR="time_of_generation_min=1000-01-01&time_of_generation_max=9999-12-31T23:59:59Z"
q "summary over an unbounded range (year 1000 to 9999)" "/v1/analytics/summary?$FAR"
q "graph requests over an unbounded range (no interval)" "/v1/analytics/graphs/requests?$FAR"
q "summary with a tokens filter over an unbounded range (raw rows)" "/v1/analytics/summary?$FAR&total_units_min=1"
echo "database: $(du -sh "$DIR" | cut -f1)"
