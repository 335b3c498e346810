#!/usr/bin/env bash
# Render /docs (Swagger UI) and /redoc (ReDoc) of a local `serve` in headless
# Chromium with every network access but loopback impossible, and save
# screenshots: both pages are served from the binary and need no internet.
#
# Usage: scripts/check-docs-render.sh [OUT_DIR=target/docs-render]
# Needs Debian's chromium (`apt-get install chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/docs-render}
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install chromium" >&2; exit 1; }
cargo build --release -q
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export DATABASE_URL="sqlite://$WORK/docs.db" LLM_PROVIDER=scripted ORCH_LOG=error
./target/release/orchestrator serve --bind 127.0.0.1:0 2>"$WORK/serve.log" &
ADDR=
for _ in $(seq 1 300); do
  ADDR=$(grep -o 'HTTP API on http://[0-9.:]*' "$WORK/serve.log" | sed 's|.*http://||' || true)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/serve.log" >&2; exit 1; }
for page in docs redoc; do
  # --proxy-server to a closed port: any request that is not loopback fails.
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --proxy-server=http://127.0.0.1:9 --proxy-bypass-list='127.0.0.1' \
    --user-data-dir="$WORK/profile-$page" --window-size=1280,900 --virtual-time-budget=8000 \
    --screenshot="$OUT/$page.png" "http://$ADDR/$page$( [ $page = docs ] && echo / )" 2>/dev/null
  echo "$OUT/$page.png: $(stat -c %s "$OUT/$page.png") bytes"
done
