#!/usr/bin/env bash
# Fuzz the HTTP API from its own OpenAPI document with schemathesis (PyPI):
# every operation, generated valid and invalid inputs, with an admin token.
# Fails if any response is a server error (5xx) or does not conform to the
# document (status code, content type, response schema).
#
# Usage: scripts/fuzz-api.sh [MAX_SECONDS=120]
# Installs schemathesis into /var/tmp/orchestrator-schemathesis (a venv) once.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIME=${1:-120}
VENV=/var/tmp/orchestrator-schemathesis
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'schemathesis>=4,<5'
fi
cargo build --release -q
BIN=$PWD/target/release/orchestrator
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export DATABASE_URL="sqlite://$WORK/fuzz.db" LLM_PROVIDER=scripted ORCH_LOG=error
"$BIN" init-db >/dev/null
TOKEN=$("$BIN" token create --scope admin --name fuzz)
"$BIN" serve --bind 127.0.0.1:0 2>"$WORK/serve.log" &
SERVE_PID=$!
ADDR=
for _ in $(seq 1 300); do
  ADDR=$(grep -o 'HTTP API on http://[0-9.:]*' "$WORK/serve.log" | sed 's|.*http://||' || true)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/serve.log" >&2; exit 1; }
# Some real data for the generated requests to find: a finished run.
curl -sf -o /dev/null -X POST "http://$ADDR/runs" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"goal":"Build a small CRUD app for managing TODO items"}'
status=0
# schemathesis keeps its state in .schemathesis/ of the current folder: keep it out of the tree.
(cd "$WORK" && "$VENV/bin/schemathesis" run "http://$ADDR/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-time "$MAX_TIME" --request-timeout 10 --workers 2) || status=$?
kill -TERM $SERVE_PID; wait $SERVE_PID || true
if grep -q "panicked" "$WORK/serve.log"; then
  echo "serve panicked during the fuzz run:" >&2; grep -A3 panicked "$WORK/serve.log" >&2; status=1
fi
exit $status
