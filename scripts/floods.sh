#!/usr/bin/env bash
# Floods, by hand: the load generator measures 200 users' latency at
# 1000 msg/s, first quiet, then while scripts/flood.py floods the same server
# (frames from one socket, 2000 bad-token sockets, 200 slow handshakes,
# oversized headers, a login flood). Loopback only; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin ephemera -p ephemera -p ephemera-load
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
EPHEMERA_ADMIN_TOKEN=flood-admin "$bin/ephemera" serve --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --data-dir "$work/data" --pbkdf2-iterations 1000 \
  --login-address-burst 100000 --login-address-rate-per-second 100000 \
  >"$work/out" 2>"$work/err" &
for _ in $(seq 100); do grep -q EPHEMERA_READY "$work/out" && break; sleep 0.1; done
addr="$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$work/out")"
base="http://$addr"
for u in victim_user flooder; do
  curl -fsS -X POST "$base/api/v1/accounts" -H 'content-type: application/json' \
    -d "{\"username\":\"$u\",\"password\":\"password123\"}" >/dev/null
done
token="$(curl -fsS -X POST "$base/api/v1/sessions" -H 'content-type: application/json' \
  -d '{"username":"flooder","password":"password123"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
load() {
  "$bin/ephemera-load" --url "$base" --users 200 --register --prefix "$1" \
    --rate 1000 --duration 20
}
echo "== quiet"
load quiet | tail -14
echo "== under flood"
python3 scripts/flood.py --port "${addr##*:}" --token "$token" --seconds 30 >"$work/flood" &
sleep 5
load attacked | tail -14
sleep 6
cat "$work/flood"
exit 0
