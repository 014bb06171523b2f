#!/usr/bin/env bash
# Server CPU per message against a bare relay, by hand. For each offered
# rate, the load generator drives first `ephemera-relay` (load/src/bin/: the
# same actix stack, the protocol subset a message run uses, no persistence)
# and then `ephemera serve` (a fresh data dir), each started fresh for the
# run, with the same users and flags. Interleaving the two per rate keeps a
# noisy machine's noise in both figures; the ratio of the server's CPU per
# acked message to the relay's is what this script is for.
#
# Writes OUT/{relay,ephemera}-RATE.json (and .txt, the generator's table,
# and .svg, its chart of throughput and latency per second)
# and OUT/summary.md (ephemera-compare). Loopback only; background fuzzers
# (`pgrep -f artifact_prefix`) are paused with SIGSTOP for the runs and
# resumed at the end, however it ends.
#
#   RATES="5000 20000 50000"  offered rates, msg/s
#   DURATION=60               seconds of sending per run
#   USERS=1000                users (500 pairs), one device each
#   OUT=load/results/bench-<date>
#   DURABILITY=wal|fsync      the server's --durability (default: its own)
#   TTL=3600                  ttl_seconds of every message; 10-30 makes every
#                             message expire during the run (burns measured)
#   GROUP=N                   group mode (ephemera-load --group-size N, N at
#                             most 256): the users split into groups of N,
#                             each created by its first member, every send to
#                             the sender's group; the relay makes groups too,
#                             so both runs stay paired. Each message makes
#                             N-1 frames: pick RATES in the hundreds (256
#                             users, GROUP=256, RATES="100 200": 25,500 and
#                             51,000 frames/s). summary.md adds a table per
#                             delivered frame.
#   SERVER_LISTEN=127.0.0.1:8180 ADMIN_LISTEN=127.0.0.1:9180
#   RELAY_LISTEN=127.0.0.1:8181
#   SKIP_BUILD=1              use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RATES="${RATES:-5000 20000 50000}"
DURATION="${DURATION:-60}"
USERS="${USERS:-1000}"
OUT="${OUT:-load/results/bench-$(date +%Y%m%d-%H%M%S)}"
SERVER_LISTEN="${SERVER_LISTEN:-127.0.0.1:8180}"
ADMIN_LISTEN="${ADMIN_LISTEN:-127.0.0.1:9180}"
RELAY_LISTEN="${RELAY_LISTEN:-127.0.0.1:8181}"

if [ -z "${SKIP_BUILD:-}" ]; then
  # The test command's build (scripts/test.sh): the same features, so the
  # same artifacts serve both and nothing is compiled twice.
  cargo build --release --workspace --all-targets --features ephemera/faults
fi
bin="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"
work="$(mktemp -d)"

pid=""      # the server or relay of the current run
paused=()   # fuzzers we stopped
finish() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for p in "${paused[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

for p in $(pgrep -f artifact_prefix || true); do
  kill -STOP "$p" 2>/dev/null && paused+=("$p")
done
[ ${#paused[@]} -eq 0 ] || echo "bench: paused ${#paused[@]} fuzzer process(es): ${paused[*]}"

# wait_ready FILE WORD: until the process of this run prints WORD.
wait_ready() {
  for _ in $(seq 300); do
    grep -q "$2" "$1" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: it exited; its stderr:"; cat "$1.err"; return 1; }
    sleep 0.1
  done
  echo "bench: not ready after 30 s"; return 1
}

stop() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

# load NAME RATE BASE: one generator run against the process in $pid.
load() {
  local status=0
  "$bin/ephemera-load" --url "$3" --users "$USERS" --register --prefix b \
    --rate "$2" --duration "$DURATION" --ttl "${TTL:-3600}" --server-pid "$pid" --quiet \
    ${GROUP:+--group-size "$GROUP"} \
    --report "$OUT/$1-$2.json" --chart "$OUT/$1-$2.svg" >"$OUT/$1-$2.txt" 2>&1 || status=$?
  # 2: the run finished but verification failed; the summary shows it.
  if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    echo "bench: ephemera-load failed against $1 at $2 msg/s:"; cat "$OUT/$1-$2.txt"; exit 1
  fi
  grep -E "acked rate|delivered frames|LOST|server CPU|generator CPU" "$OUT/$1-$2.txt" | sed "s/^/  $1 $2: /"
}

shape="pairs"
[ -z "${GROUP:-}" ] || shape="in groups of $GROUP"
pairs=()
for rate in $RATES; do
  echo "== $rate msg/s: relay"
  "$bin/ephemera-relay" --listen "$RELAY_LISTEN" >"$work/relay" 2>"$work/relay.err" &
  pid=$!
  wait_ready "$work/relay" RELAY_READY
  load relay "$rate" "http://$RELAY_LISTEN"
  stop

  echo "== $rate msg/s: ephemera"
  rm -rf "$work/data"
  EPHEMERA_ADMIN_TOKEN=bench RUST_LOG=warn "$bin/ephemera" serve \
    --listen "$SERVER_LISTEN" --admin-listen "$ADMIN_LISTEN" --data-dir "$work/data" \
    ${DURABILITY:+--durability "$DURABILITY"} --pbkdf2-iterations 1000 \
    --send-rate-per-second 1000000 --send-burst 1000000 \
    --frame-rate-per-second 1000000 --frame-burst 1000000 \
    --login-address-rate-per-second 1000000 --login-address-burst 1000000 \
    --max-sockets-per-address 1000000 --kdf-queue 1000000 >"$work/server" 2>"$work/server.err" &
  pid=$!
  wait_ready "$work/server" EPHEMERA_READY
  load ephemera "$rate" "http://$SERVER_LISTEN"
  stop
  pairs+=("$OUT/relay-$rate.json" "$OUT/ephemera-$rate.json")
done

{
  echo "# Ephemera against the bare relay"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'),"
  echo "$(nproc) cores; $USERS users (one device each, $shape), ${DURATION} s per run,"
  echo "durability ${DURABILITY:-wal (default)}, ttl ${TTL:-3600} s; relay and server runs interleaved per rate."
  echo
  "$bin/ephemera-compare" "${pairs[@]}"
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
