#!/usr/bin/env bash
# Installs what building and testing Ephemera needs on a fresh Debian
# machine, and points cargo at a target directory that survives between
# runs. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

# One target directory for every build, kept across runs (RocksDB's C++
# takes ~17 minutes to compile on 2 cores; it is built once, in release).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ephemera-target}"
mkdir -p "$CARGO_TARGET_DIR"

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# librocksdb-sys generates its bindings with bindgen, which needs libclang.
apt_install libclang-dev clang
