#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration
# tests in tests/, which start the real binary on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads 2
