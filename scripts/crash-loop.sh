#!/usr/bin/env bash
# The long crash-loop attack, run by hand (the test command runs 5 cycles):
# a sender and a receiver talk while the server is killed with SIGKILL at
# random moments and restarted on the same data directory, CRASH_CYCLES
# times (default 100). At the end every acked message reached the receiving
# device exactly once or had expired, and none arrived after its expiry.
# CRASH_SEED=<n> replays a run (the seed is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CRASH_CYCLES="${CRASH_CYCLES:-100}"
cargo test --release --features ephemera/faults --test crash_loop -- \
  --ignored crash_loop_long --nocapture
