#!/usr/bin/env bash
# The stories mix against a fresh release server, by hand (not part of the
# test suite). Starts `ephemera serve` on a new data dir with the limits
# that would otherwise measure throttling raised, waits for EPHEMERA_READY,
# runs `ephemera-load --mix stories` (setup: AUTHORS authors and VIEWERS
# viewers registered, every viewer following every author, each author
# posting STORIES_PER_AUTHOR stories; then tray reads, views and posts,
# open loop, for DURATION seconds; then view counts read back) and stops
# the server.
#
# Writes OUT/stories.json (the report), OUT/stories.txt (the generator's
# table and progress) and OUT/summary.md (the settings, the commit and the
# table). Loopback only. Exit status: the generator's (2: the run finished
# but a tray or a view count was wrong; the summary shows which).
#
#   AUTHORS=1000 VIEWERS=50 STORIES_PER_AUTHOR=1
#   TRAY_RATE=100             tray reads a second
#   VIEW_RATE=2000            views a second
#   POST_RATE=0               stories posted a second during the run
#   DURATION=60               seconds of the run
#   VERIFY=100                stories whose view count is checked after it
#   OUT=load/results/stories-<date>
#   DURABILITY=wal|fsync      the server's --durability (default: its own)
#   SERVER_LISTEN=127.0.0.1:8280 ADMIN_LISTEN=127.0.0.1:9280
#   SERVER_ARGS="..."         more `ephemera serve` flags (e.g.
#                             --story-fanout-max-followers 10)
#   SERVER_BIN, LOAD_BIN      the binaries (default: $CARGO_TARGET_DIR/release)
#   SERVER_COMMIT=abc1234     the commit SERVER_BIN was built from, for the
#                             summary (when it is not this checkout's)
#   SKIP_BUILD=1              use the binaries already built
#   PAUSE_FUZZERS=1           SIGSTOP background fuzzers (`pgrep -f
#                             artifact_prefix`) for the run, as bench.sh
#                             does, and resume them however it ends
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

AUTHORS="${AUTHORS:-1000}"
VIEWERS="${VIEWERS:-50}"
STORIES_PER_AUTHOR="${STORIES_PER_AUTHOR:-1}"
TRAY_RATE="${TRAY_RATE:-100}"
VIEW_RATE="${VIEW_RATE:-2000}"
POST_RATE="${POST_RATE:-0}"
DURATION="${DURATION:-60}"
VERIFY="${VERIFY:-100}"
OUT="${OUT:-load/results/stories-$(date +%Y%m%d-%H%M%S)}"
SERVER_LISTEN="${SERVER_LISTEN:-127.0.0.1:8280}"
ADMIN_LISTEN="${ADMIN_LISTEN:-127.0.0.1:9280}"
SERVER_BIN="${SERVER_BIN:-$CARGO_TARGET_DIR/release/ephemera}"
LOAD_BIN="${LOAD_BIN:-$CARGO_TARGET_DIR/release/ephemera-load}"

if [ -z "${SKIP_BUILD:-}" ]; then
  # bench.sh's (and the test command's) build, so the artifacts are shared.
  cargo build --release --workspace --all-targets --features ephemera/faults
fi
mkdir -p "$OUT"
work="$(mktemp -d)"

pid=""      # the server
paused=()   # fuzzers we stopped
finish() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for p in "${paused[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

if [ -n "${PAUSE_FUZZERS:-}" ]; then
  for p in $(pgrep -f artifact_prefix || true); do
    kill -STOP "$p" 2>/dev/null && paused+=("$p")
  done
  [ ${#paused[@]} -eq 0 ] || echo "bench-stories: paused ${#paused[@]} fuzzer process(es): ${paused[*]}"
fi

# Every account registers and logs in from 127.0.0.1, one upload per
# story: the per-address login and per-user upload limits are raised so
# the setup is not throttled; the rest are the server's own.
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
EPHEMERA_ADMIN_TOKEN=bench RUST_LOG=warn "$SERVER_BIN" serve \
  --listen "$SERVER_LISTEN" --admin-listen "$ADMIN_LISTEN" --data-dir "$work/data" \
  ${DURABILITY:+--durability "$DURABILITY"} --pbkdf2-iterations 1000 \
  --login-address-rate-per-second 1000000 --login-address-burst 1000000 \
  --kdf-queue 1000000 \
  --media-upload-rate-per-second 1000000 --media-upload-burst 1000000 \
  ${SERVER_ARGS:-} >"$work/server" 2>"$work/server.err" &
pid=$!
for _ in $(seq 300); do
  grep -q EPHEMERA_READY "$work/server" && break
  kill -0 "$pid" 2>/dev/null || { echo "bench-stories: the server exited; its stderr:"; cat "$work/server.err"; exit 1; }
  sleep 0.1
done
grep -q EPHEMERA_READY "$work/server" || { echo "bench-stories: server not ready after 30 s"; exit 1; }

echo "== stories: $AUTHORS authors x $STORIES_PER_AUTHOR, $VIEWERS viewers; trays $TRAY_RATE/s, views $VIEW_RATE/s, posts $POST_RATE/s for $DURATION s"
status=0
"$LOAD_BIN" --url "http://$SERVER_LISTEN" --mix stories --register --prefix s \
  --authors "$AUTHORS" --viewers "$VIEWERS" --stories-per-author "$STORIES_PER_AUTHOR" \
  --tray-rate "$TRAY_RATE" --view-rate "$VIEW_RATE" --post-rate "$POST_RATE" \
  --duration "$DURATION" --verify-stories "$VERIFY" --server-pid "$pid" --quiet \
  --report "$OUT/stories.json" >"$OUT/stories.txt" 2>&1 || status=$?
# 2: the run finished but verification failed; anything else is an error.
if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
  echo "bench-stories: ephemera-load failed:"; cat "$OUT/stories.txt"
  echo "bench-stories: the server's stderr:"; tail -n 20 "$work/server.err"
  exit "$status"
fi
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=""

{
  echo "# Stories mix"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'),"
  echo "$(nproc) cores; $AUTHORS authors x $STORIES_PER_AUTHOR stories, $VIEWERS viewers each following"
  echo "every author; open loop for ${DURATION} s: $TRAY_RATE tray reads/s, $VIEW_RATE views/s,"
  echo "$POST_RATE posts/s; durability ${DURABILITY:-wal (default)}${SERVER_ARGS:+; server flags: $SERVER_ARGS}."
  [ -z "${SERVER_COMMIT:-}" ] || echo "Server built from commit $SERVER_COMMIT ($SERVER_BIN)."
  echo
  echo '```'
  cat "$OUT/stories.txt"
  echo '```'
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
exit "$status"
