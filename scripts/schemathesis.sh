#!/usr/bin/env bash
# The HTTP API against its schema: schemathesis (from PyPI, pinned, in a
# virtualenv of its own) generates requests from schema/openapi.json and
# sends them to a live server; every answer must match the document and no
# input may yield a 500. Called by scripts/test.sh with the server binary;
# ST_SECONDS (default 90) bounds the run. One worker: two threads in one
# Python process sometimes crash its schema compiler (CPython 3.11 ast).
#
# Left out on purpose: logout, which would end the run's own session.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:?usage: scripts/schemathesis.sh PATH_TO_EPHEMERA_BINARY}"
ST_VERSION=4.32.5
VENV="$HOME/.cache/ephemera-schemathesis"
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "$ST_VERSION"; then
  echo "schemathesis: installing $ST_VERSION" >&2
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    source scripts/setup.sh
    apt_install python3-venv python3-pip
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
EPHEMERA_ADMIN_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  "$BIN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --data-dir "$work/data" --pbkdf2-iterations 1000 \
  >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 100); do
  grep -q EPHEMERA_READY "$work/out" 2>/dev/null && break
  sleep 0.1
done
base="http://$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$work/out")"
user="schema_$RANDOM"
curl -fsS -X POST "$base/api/v1/accounts" -H 'content-type: application/json' \
  -d "{\"username\":\"$user\",\"password\":\"password123\"}" >/dev/null
token="$(curl -fsS -X POST "$base/api/v1/sessions" -H 'content-type: application/json' \
  -d "{\"username\":\"$user\",\"password\":\"password123\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

# From the temporary directory: schemathesis keeps a cache there.
repo="$PWD"
cd "$work"
"$VENV/bin/st" run "$repo/schema/openapi.json" --url "$base" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/v1/sessions/current \
  --max-time "${ST_SECONDS:-90}" --workers 1 --no-color "${@:2}"
