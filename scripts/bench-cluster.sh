#!/usr/bin/env bash
# What crossing nodes costs, by hand: for each offered rate, the load
# generator drives first one node (no Redis: the single-node default), then
# a cluster of NODES nodes on one redis-server, all on this machine's
# loopback, with the same users and flags. In the cluster the generator
# spreads users over the nodes (`--url` repeated) so that every 1:1 pair
# sits on two different nodes: every message crosses. The server CPU of a
# run is read from /proc (utime + stime of every node, and of redis-server,
# before and after the generator), and divided by the acked messages.
#
# Writes OUT/{single,cluster}-RATE.{json,txt} and OUT/summary.md.
#
#   RATES="1000 3000"   offered rates, msg/s
#   DURATION=30         seconds of sending per run
#   USERS=600           users (300 pairs), one device each
#   NODES=3             nodes in the cluster run
#   OUT=load/results/cluster-<date>
#   SKIP_BUILD=1        use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
apt_install redis-server

RATES="${RATES:-1000 3000}"
DURATION="${DURATION:-30}"
USERS="${USERS:-600}"
NODES="${NODES:-3}"
OUT="${OUT:-load/results/cluster-$(date +%Y%m%d-%H%M%S)}"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --workspace --all-targets --features ephemera/faults
fi
bin="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"
work="$(mktemp -d)"
pids=()
finish() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

ticks() { # the CPU ticks (user + system) of the given pids, summed
  local t=0
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

wait_line() { # FILE WORD
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-cluster: $1 never said $2"; cat "$1.err" 2>/dev/null; return 1
}

# node N PORT: starts node N (cluster mode when $redis_url is set).
node() {
  local n=$1 port=$2
  mkdir -p "$work/data$n"
  env EPHEMERA_ADMIN_TOKEN=bench RUST_LOG=warn \
    ${redis_url:+EPHEMERA_REDIS_URL=$redis_url EPHEMERA_NODE_ID=node-$n} \
    "$bin/ephemera" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1000))" \
    --data-dir "$work/data$n" --pbkdf2-iterations 1000 \
    --send-rate-per-second 1000000 --send-burst 1000000 \
    --frame-rate-per-second 1000000 --frame-burst 1000000 \
    --login-address-rate-per-second 1000000 --login-address-burst 1000000 \
    --max-sockets-per-address 1000000 --kdf-queue 1000000 \
    >"$work/node$n" 2>"$work/node$n.err" &
  pids+=($!)
  wait_line "$work/node$n" EPHEMERA_READY
}

run() { # NAME RATE URL...
  local name=$1 rate=$2; shift 2
  local urls=() status=0
  for u in "$@"; do urls+=(--url "$u"); done
  local before; before=$(ticks "${pids[@]}")
  "$bin/ephemera-load" "${urls[@]}" --users "$USERS" --register --prefix "$name$rate" \
    --rate "$rate" --duration "$DURATION" --quiet \
    --report "$OUT/$name-$rate.json" >"$OUT/$name-$rate.txt" 2>&1 || status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    echo "bench-cluster: ephemera-load failed ($name, $rate msg/s):"; cat "$OUT/$name-$rate.txt"; exit 1
  fi
  local after; after=$(ticks "${pids[@]}")
  python3 - "$OUT/$name-$rate.json" "$((after - before))" "$(getconf CLK_TCK)" "$name" "$rate" >>"$work/rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); ticks, hz = int(sys.argv[2]), int(sys.argv[3])
acked = r["counts"]["acked"]; lost = r["accounting"].get("lost", 0) if isinstance(r.get("accounting"), dict) else 0
cpu_us = ticks / hz / max(acked, 1) * 1e6
lat = r["latency"]
print(f"| {sys.argv[4]} | {sys.argv[5]} | {r['acked_rate']:.0f} | {acked} | {lost} | {lat['ack']['p50_ms']:.1f} / {lat['ack']['p99_ms']:.1f} | {lat['delivery']['p50_ms']:.1f} / {lat['delivery']['p99_ms']:.1f} | {cpu_us:.0f} |")
PY
  tail -1 "$work/rows"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

for rate in $RATES; do
  echo "== $rate msg/s: one node"
  rm -rf "$work"/data*
  redis_url=""
  node 0 8280
  run single "$rate" http://127.0.0.1:8280

  echo "== $rate msg/s: $NODES nodes on Redis"
  rm -rf "$work"/data* "$work/redis"
  mkdir -p "$work/redis"
  redis-server --port 6390 --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync everysec --save "" >"$work/redis.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  redis_url="redis://127.0.0.1:6390"
  urls=()
  for n in $(seq 0 $((NODES - 1))); do
    node "$n" $((8290 + n * 2))
    urls+=("http://127.0.0.1:$((8290 + n * 2))")
  done
  run cluster "$rate" "${urls[@]}"
done

{
  echo "# One node against $NODES nodes on Redis"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), $(nproc) cores,"
  echo "$USERS users (one device each, 1:1 pairs; in the cluster every pair spans two nodes), ${DURATION} s per run."
  echo "Server CPU: every node's and redis-server's user + system time over the run, per acked message."
  echo
  echo "| setup | offered msg/s | acked msg/s | acked | lost | ack p50 / p99 ms | delivery p50 / p99 ms | server CPU µs/msg |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$work/rows"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
