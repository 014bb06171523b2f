#!/usr/bin/env bash
# Runs the server on its embedded defaults: RocksDB in ./data, public API on
# 127.0.0.1:8080, admin on 127.0.0.1:9090. Extra arguments go to
# `ephemera serve` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo run --release --bin ephemera -- serve "$@"
