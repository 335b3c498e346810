#!/usr/bin/env bash
# HTTP API benchmark: requests/s and latency percentiles of
# `GET /runs/{id}/status` and `POST /runs` under wrk on loopback, and the
# resident memory of `orchestrator serve` idle and with 1,000 active runs.
#
# Embedded mode (SQLite WAL, in-process queues and workers), scripted
# provider. For POST /runs and the memory figure every scripted response is
# delayed by SCRIPTED_LATENCY_MS=600000, so runs stay active (their first task
# in flight) and the load measures the API and run creation, not the agents.
#
# Usage: scripts/bench-api.sh [DURATION_SECONDS=10] [CONNECTIONS=32]
# Needs wrk (Debian package `wrk`); builds the release binary, unless
# ORCH_BIN names the binary to measure (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-32}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
if [ -n "${ORCH_BIN:-}" ]; then
  BIN=$ORCH_BIN
else
  cargo build --release -q
  BIN=$PWD/target/release/orchestrator
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export DATABASE_URL="sqlite://$WORK/bench.db" LLM_PROVIDER=scripted ORCH_LOG=error

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

start_serve() { # $1 = log file; env SCRIPTED_LATENCY_MS may be set
  "$BIN" serve --bind 127.0.0.1:0 2>"$1" &
  SERVE_PID=$!
  for _ in $(seq 1 300); do
    ADDR=$(grep -o 'HTTP API on http://[0-9.:]*' "$1" | sed 's|.*http://||' || true)
    [ -n "$ADDR" ] && return 0
    sleep 0.1
  done
  echo "serve did not start: $(cat "$1")" >&2; exit 1
}

"$BIN" init-db >/dev/null
TOKEN=$("$BIN" token create --scope write --name bench)

# 1. GET status of a finished run.
start_serve "$WORK/serve1.log"
sleep 1
echo "idle serve RSS: $(rss_mb $SERVE_PID) MB"
RUN=$(curl -sf -X POST "http://$ADDR/runs" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"goal":"Build a small CRUD app for managing TODO items"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 100); do
  S=$(curl -sf "http://$ADDR/runs/$RUN/status" -H "Authorization: Bearer $TOKEN" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [ "$S" = COMPLETED ] && break; sleep 0.1
done
echo "== GET /runs/{id}/status (${DURATION}s, $CONNS connections) =="
wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" \
  "http://$ADDR/runs/$RUN/status" | grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors'
kill -TERM $SERVE_PID; wait $SERVE_PID || true

# 2. POST /runs, runs kept active; then memory with 1,000 active runs.
export SCRIPTED_LATENCY_MS=600000
start_serve "$WORK/serve2.log"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"goal":"Build a small CRUD app for managing TODO items"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
echo "== POST /runs (${DURATION}s, $CONNS connections) =="
wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://$ADDR/runs" \
  | grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors'
kill -TERM $SERVE_PID; wait $SERVE_PID || true

rm -f "$WORK"/bench.db*
"$BIN" init-db >/dev/null
TOKEN=$("$BIN" token create --scope write --name bench)
start_serve "$WORK/serve3.log"
sleep 1
echo "idle serve RSS (fresh database): $(rss_mb $SERVE_PID) MB"
seq 1 1000 | xargs -P 16 -I{} curl -sf -o /dev/null -X POST "http://$ADDR/runs" \
  -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"goal":"Build a small CRUD app for managing TODO items, variant {}"}'
sleep 2
ACTIVE=$(curl -sf "http://$ADDR/runs?status=RUNNING&limit=500" -H "Authorization: Bearer $TOKEN" \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
echo "active runs (first page, max 500): $ACTIVE"
echo "serve RSS with 1,000 active runs: $(rss_mb $SERVE_PID) MB"
kill -TERM $SERVE_PID; wait $SERVE_PID || true
