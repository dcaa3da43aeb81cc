#!/usr/bin/env bash
# Analytics at scale: seeds N requests (default 1,000,000 over 30 days) into a
# fresh data directory through the ordinary request-log writer, starts a
# release build of Tollgate on a free loopback port, and times summaries,
# graphs and groups over the data, hour graphs and per-request filters
# (raw rows), and queries over an unbounded range.
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
SEEDED_AT=$(date -u +%s)
/usr/bin/time -f "seed: %e s wall, %M KiB max RSS" "$BIN" seed-usage --data-dir "$DIR" --rows "$ROWS" --days "$DAYS"
KEY=$("$BIN" admin-key create --data-dir "$DIR" 2>/dev/null)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --data-dir "$DIR" --listen "127.0.0.1:$PORT" 2>"$DIR/serve.log" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

# Each query runs 3 times over ranges starting 1, 2 and 3 hours after the
# first request, so no run can reuse another's answer (identical questions
# asked before the log moves share one answer: that is timed last, apart).
# (seed-usage spreads its rows over the DAYS before it started.)
FIRST=$((SEEDED_AT - DAYS * 86400))
LAST=$SEEDED_AT
t() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
q() {
  local name=$1 path=$2 skip=${3:-0}
  for i in 1 2 3; do
    local p=${path//FROM/$(t $((FIRST + skip + i * 3600)))}
    p=${p//TO/$(t "$LAST")}
    curl -s -o "$DIR/out.json" -w "$name run $i: %{time_total} s, HTTP %{http_code}, %{size_download} bytes\n" \
      -H "x-portkey-api-key: $KEY" "http://127.0.0.1:$PORT$p"
  done
}
R="time_of_generation_min=FROM&time_of_generation_max=TO"
WEEK=$(( (DAYS - 7) * 86400 ))
q "summary ($DAYS days)" "/v1/analytics/summary?$R"
python3 -c "import json,sys; d=json.load(open('$DIR/out.json'))['data']; print('  requests', d['requests'], 'cost', d['cost'], 'p99', d['latency_p99_ms'], 'peak rpm', d['peak_requests_per_minute'])"
q "graph requests by day ($DAYS days)" "/v1/analytics/graphs/requests?interval=day&$R"
q "graph users (distinct keys) by day ($DAYS days)" "/v1/analytics/graphs/users?interval=day&$R"
q "group by model ($DAYS days)" "/v1/analytics/groups/ai-models?$R"
q "graph cost by hour (last 7 days, raw rows)" "/v1/analytics/graphs/cost?interval=hour&$R" "$WEEK"
q "summary with a metadata filter ($DAYS days, raw rows)" "/v1/analytics/summary?$R&metadata=%7B%22env%22%3A%22prod%22%7D"
q "summary with a tokens filter ($DAYS days, raw rows)" "/v1/analytics/summary?$R&total_units_min=1"
FAR="time_of_generation_min=1000-01-01&time_of_generation_max=9999-12-31T23:59:59Z"
for what in "summary?$FAR" "graphs/requests?$FAR" "graphs/requests?interval=day&$FAR" "groups/ai-models?$FAR"; do
  for i in 1 2; do
    curl -s -o "$DIR/out.json" -w "unbounded $what run $i: %{time_total} s, HTTP %{http_code}\n" \
      -H "x-portkey-api-key: $KEY" "http://127.0.0.1:$PORT/v1/analytics/$what"
  done
done
echo "database: $(du -sh "$DIR" | cut -f1)"
