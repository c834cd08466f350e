#!/usr/bin/env bash
# Property-based API check: schemathesis (PyPI) generates requests from /api/v1/openapi.json
# of a running server, authenticated with the admin token, and fails on any 5xx answer, any
# answer whose status, content type or body the document does not describe.
#
#   scripts/schemathesis.sh                 # builds the debug binary; ~5 min on 2 cores
#   EXAMPLES=100 scripts/schemathesis.sh    # more examples per operation
#   WATTLINE_BIN=target/release/wattline scripts/schemathesis.sh
#
# Bounded: EXAMPLES per operation (default 25) and an overall TIME_LIMIT (default 900 s).
# Everything runs on 127.0.0.1 against a throwaway data directory. /api/v1/live is left out:
# its answer is an endless event stream, which a request/response checker can only time out
# on; tests/it/live.rs covers it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${EXAMPLES:-25}
TIME_LIMIT=${TIME_LIMIT:-900}
VENV=${SCHEMATHESIS_VENV:-$HOME/.cache/wattline/schemathesis-venv}
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'schemathesis>=4.3,<5'
fi
BIN=${WATTLINE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build -q -p wattline --locked
  BIN=target/debug/wattline
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
TOKEN="schemathesis-admin-token-0123456789"
LOG="$DATA/server.log"
WATTLINE_ADMIN_TOKEN=$TOKEN "$BIN" serve --http "127.0.0.1:$PORT" --mqtt off --data-dir "$DATA/data" >"$LOG" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.1
done
BASE="http://127.0.0.1:$PORT"
AUTH="Authorization: Token $TOKEN"
# Something to find: a site, a device with readings, a user.
curl -sf -H "$AUTH" -X POST "$BASE/api/v1/sites" -d '{"id": "home", "name": "Home", "timezone": "Europe/Zurich"}' >/dev/null
curl -sf -H "$AUTH" -X POST "$BASE/api/v1/devices" -d '{"id": "meter1", "name": "Meter", "site": "home"}' >/dev/null
NOW=$(date +%s)
curl -sf -H "$AUTH" -X POST "$BASE/write?precision=s" --data-binary "e,device=meter1 power=100,voltage=230,energy=1.5 $((NOW - 60))
e,device=meter1 power=120,voltage=231,energy=1.6 $NOW" >/dev/null
curl -sf -H "$AUTH" -X POST "$BASE/api/v1/users" -d '{"email": "owner@example.org", "password": "long enough passphrase 42", "role": "owner", "sites": ["home"]}' >/dev/null

set +e
NO_COLOR=1 timeout "$TIME_LIMIT" "$VENV/bin/schemathesis" run "$BASE/api/v1/openapi.json" \
  --header "$AUTH" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$EXAMPLES" \
  --request-timeout 30 \
  --exclude-path /api/v1/live \
  --generation-deterministic
RC=$?
set -e
if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "the server died during the run:" >&2
  tail -50 "$LOG" >&2
  exit 1
fi
if grep -q "panicked" "$LOG"; then
  echo "the server log shows a panic:" >&2
  grep -B2 -A10 "panicked" "$LOG" >&2
  exit 1
fi
echo "schemathesis exit code: $RC"
exit $RC
